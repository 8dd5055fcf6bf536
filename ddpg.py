"""Deep Deterministic Policy Gradient, for bounded Box action spaces.

DDPG (Lillicrap et al. 2016, arXiv:1509.02971) is DQN's critic with a deterministic actor μ_θ(s) in place of the
max over actions. It is off-policy: the critic's target needs only (s, a, r, s', term) from a replay buffer and
the target actor at s', never the probability of the stored a, so data from any earlier (noisier) policy serves.

  y       = r + γ (1 − term) Q_θ⁻(s', μ_θ⁻(s'))               target critic and actor, parameters θ⁻
  L_Q     = Ê[(Q_θ(s, a) − y)²]
  ∇_θ J   = Ê[∇_a Q(s, a)|_{a=μ_θ(s)} ∇_θ μ_θ(s)]             deterministic policy gradient (Silver et al. 2014)
  a_t     = clip(μ_θ(s_t) + ε, −1, 1),   ε ~ N(0, σ²)          Gaussian exploration noise
  θ⁻      ← τ θ + (1 − τ) θ⁻                                  Polyak-averaged targets, for actor and critic

The actor and the targets are updated after every critic step, as in DDPG; --policy-frequency d > 1 delays them
to every d-th step, as TD3 does. The policy lives in [−1, 1]^|A| (tanh output) and actions are rescaled affinely
to the env's bounds when stepped, so σ is a fraction of the half-range of each action. Defaults: CleanRL's MuJoCo
settings (batch 256, 256×256 nets, buffer 1e6, lr 3e-4, σ = 0.1), with d = 1 and 5k random steps (CleanRL's 25k
would leave a 30k-step run 5k steps of learning; 5k is sac_continuous.py's, and InvertedPendulum needs ~20k).

Usage: python ddpg.py --env-id Hopper-v5
       python ddpg.py --env-id HalfCheetah-v5 --seed 3
       python ddpg.py --eval-model runs/<run>/ddpg.pt
"""

import copy
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    buffer_size: int = 1_000_000  # replay buffer capacity in transitions (FIFO)
    learning_starts: int = 5_000  # uniformly random actions and no updates for this many env steps
    batch_size: int = 256  # transitions per gradient step, sampled uniformly from the buffer
    gamma: float = 0.99  # γ: discount factor, typically 0.98-0.999
    tau: float = 0.005  # τ: Polyak rate of the targets, θ⁻ ← τθ + (1 − τ)θ⁻; typically 0.005-0.01
    learning_rate: float = 3e-4  # Adam step size of the actor and of the critic
    exploration_noise: float = 0.1  # σ: std of the Gaussian action noise, as a fraction of each action's half-range
    policy_frequency: int = 1  # d: actor and target updates every d critic steps; 1 as in DDPG, TD3 uses 2
    hidden: int = 256  # width of the two hidden layers of the actor and of the critic

    # The run
    env_id: str = "Hopper-v5"  # gymnasium environment id
    total_timesteps: int = 1_000_000  # environment steps to train for
    num_envs: int = 1  # N: parallel environments (one gradient step per N env steps)
    seed: int = 1  # seed of random, numpy, torch and the environments
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name, part of the run folder's name
    torch_deterministic: bool = True  # set torch.backends.cudnn.deterministic
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto picks cuda, then mps, then cpu
    threads: int = 2  # torch CPU threads; 2 ran DDPG's 256-wide updates 1.7× faster than 1 on 2 idle cores; 0: default
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the weights (with any normalisation statistics) and these Args to the run folder
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)


# ── The target and the losses, in the order the lecture derives them ──
def td_target(rewards, terminations, next_q, gamma: float):
    """y for a batch, with next_q = Q_θ⁻(s', μ_θ⁻(s')) from the target networks: a fixed regression target, no
    gradient. A terminal s' has value 0; a time-limit truncation was stored with term = 0 and its true s', so it
    bootstraps."""
    # y = r + γ (1 − term) Q_θ⁻(s', μ_θ⁻(s'))
    return rewards + gamma * (1.0 - terminations) * next_q


def critic_loss(q, td_target):
    """L_Q = Ê[(Q_θ(s, a) − y)²], with y held fixed."""
    return ((q - td_target) ** 2).mean()


def actor_loss(q_mu):
    """−Ê[Q(s, μ_θ(s))]: minimising it ascends Q along the actor's output. Autograd's chain rule through
    a = μ_θ(s) gives exactly the deterministic policy gradient Ê[∇_a Q(s, a)|_{a=μ_θ(s)} ∇_θ μ_θ(s)]."""
    return -q_mu.mean()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """Target parameters θ⁻ ← τ θ + (1 − τ) θ⁻, each one (the notes' ρ = 1 − τ); τ = 1 is a hard copy."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


# ── Networks and the replay buffer ──
def scale_action(a, low, high):
    """Map a ∈ [−1, 1]^|A| affinely onto the env's box [low, high] (numpy arrays or tensors)."""
    return low + (a + 1.0) * 0.5 * (high - low)


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, n_out))  # fmt: skip


class Actor(nn.Module):
    """μ_θ(s) = tanh(MLP(s)) ∈ [−1, 1]^|A|: deterministic; rescaled to the env's bounds only when stepped."""

    def __init__(self, obs_dim: int, act_space: gym.spaces.Box, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, act_space.shape[0], hidden)
        self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32))

    def forward(self, obs):
        return torch.tanh(self.net(obs))

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: μ(s) without noise, rescaled to the env's bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.low.device)
        return scale_action(self(obs), self.low, self.high).cpu().numpy()


class QNetwork(nn.Module):
    """Q_θ(s, a): an MLP of the concatenated state and action, with a linear output (Q-values are unbounded)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs, actions):
        return self.net(torch.cat([obs, actions], dim=-1)).squeeze(-1)


def make_agent(args: Args, obs_space, act_space) -> Actor:
    """The actor: what --save-model saves and evaluation runs (the critic only serves training)."""
    return Actor(obs_space.shape[0], act_space, args.hidden)


def final_observations(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """s_{t+1} of each env's transition: under SAME_STEP autoreset, envs whose episode just ended already return
    the next episode's first observation, and their true last observation is in info["final_obs"]."""
    real_next_obs = next_obs.copy()
    if "final_obs" in info:
        ended = info["_final_obs"]
        real_next_obs[ended] = np.stack(info["final_obs"][ended])
    return real_next_obs


class ReplayBuffer:
    """Experience replay: a preallocated FIFO ring of transitions (s, a, r, s', term), sampled uniformly.
    Only `terminated` is stored: a truncated transition keeps its true s' and bootstraps like any other."""

    def __init__(self, capacity: int, obs_shape: tuple, act_shape: tuple, act_dtype, device: torch.device):
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((capacity, *act_shape), dtype=act_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.pos, self.size, self.device = capacity, 0, 0, device

    def add(self, obs, actions, rewards, next_obs, terminations):
        """Store one transition per env (arrays with a leading N axis); once full, the oldest are overwritten."""
        idx = (self.pos + np.arange(len(obs))) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.terminations[idx] = next_obs, terminations
        self.pos = (self.pos + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    def sample(self, batch_size: int):
        """A uniform minibatch (with replacement) of the filled slots, as tensors (s, a, r, s', term)."""
        idx = np.random.randint(0, self.size, size=batch_size)
        data = (self.obs, self.actions, self.rewards, self.next_obs, self.terminations)
        return tuple(torch.as_tensor(x[idx], device=self.device) for x in data)


# ── Training: act with noise → store → sample → td_target → critic step → actor step and Polyak targets ──
def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    N, act_dim = args.num_envs, act_space.shape[0]
    actor = make_agent(args, obs_space, act_space).to(device)
    qf = QNetwork(obs_space.shape[0], act_dim, args.hidden).to(device)
    # the target networks θ⁻: slowly moving copies that y is computed from, never trained by gradient
    actor_target, qf_target = copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(qf).requires_grad_(False)
    # fused=True: one kernel for all parameters of an optimizer, several times faster steps on CPU
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_space.shape, act_space.shape, np.float32, device)
    obs, _ = envs.reset(seed=args.seed)
    stats = {}
    with Run(args, actor) as run:
        for iteration in range(1, num_iterations(args, N) + 1):
            # ---- act: uniformly at random while the buffer fills (diverse data), then μ_θ(s) + noise ----
            if iteration * N <= args.learning_starts:
                actions = np.random.uniform(-1.0, 1.0, (N, act_dim)).astype(np.float32)
            else:
                with torch.no_grad():  # a = clip(μ_θ(s) + ε, −1, 1), ε ~ N(0, σ²)
                    mu = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
                    actions = (mu + args.exploration_noise * torch.randn_like(mu)).clamp(-1.0, 1.0).cpu().numpy()
            next_obs, rewards, terminations, _, info = envs.step(scale_action(actions, act_space.low, act_space.high))
            # ---- store (s, a, r, s', term): the true s' of an ended episode; a truncated one bootstraps, term = 0 ----
            rb.add(obs, actions, rewards, final_observations(next_obs, info), terminations)
            obs, run.step = next_obs, run.step + N
            run.log_episodes(info)
            if run.step <= args.learning_starts:
                continue

            # ---- critic: regress Q_θ(s, a) onto y from the target networks ----
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = rb.sample(args.batch_size)
            with torch.no_grad():
                next_q = qf_target(b_next_obs, actor_target(b_next_obs))  # Q_θ⁻(s', μ_θ⁻(s'))
            q = qf(b_obs, b_actions)
            qf_loss = critic_loss(q, td_target(b_rewards, b_terminations, next_q, args.gamma))
            check_finite(critic_loss=qf_loss)
            q_optimizer.zero_grad(set_to_none=True)
            qf_loss.backward()
            q_optimizer.step()

            # ---- actor, then the targets: every d-th step (every step at DDPG's d = 1) ----
            if iteration % args.policy_frequency == 0:
                qf.requires_grad_(False)  # the actor's loss moves θ of μ only: Q is a constant here (no weight grads)
                pi_loss = actor_loss(qf(b_obs, actor(b_obs)))
                qf.requires_grad_(True)
                check_finite(actor_loss=pi_loss)
                actor_optimizer.zero_grad(set_to_none=True)
                pi_loss.backward()
                actor_optimizer.step()
                polyak_update(actor_target, actor, args.tau)
                polyak_update(qf_target, qf, args.tau)
                stats["losses/actor_loss"] = pi_loss.detach()

            if iteration % 100 == 0:  # read the tensors (a host sync on a GPU) only when logging
                run.log({**stats, "losses/qf_loss": qf_loss.detach(), "diagnostics/q_values": q.detach().mean()})
                run.progress()
        envs.close()
        return run.finish()


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, what cannot work."""
    bounded = isinstance(act_space, gym.spaces.Box) and np.isfinite(np.r_[act_space.low, act_space.high]).all()
    check(
        check_spaces(args.env_id, obs_space, act_space, gym.spaces.Box),
        (bounded, f"needs a bounded Box action space; {args.env_id} has {act_space}"),
        (min(args.num_envs, args.batch_size, args.policy_frequency, args.hidden) >= 1,
         "--num-envs, --batch-size, --policy-frequency and --hidden must be >= 1"),
        (args.num_envs <= args.total_timesteps, "--total-timesteps must be at least --num-envs"),
        (0 <= args.learning_starts < args.total_timesteps,
         f"--learning-starts {args.learning_starts} must lie in [0, --total-timesteps {args.total_timesteps})"),
        (args.buffer_size >= max(args.num_envs, args.batch_size),
         f"--buffer-size {args.buffer_size} must hold at least --batch-size {args.batch_size} and --num-envs"),
        (0 <= args.gamma <= 1 and 0 < args.tau <= 1, "--gamma must lie in [0, 1] and --tau in (0, 1]"),
        (0 < args.learning_rate < math.inf, "--learning-rate must be positive and finite"),
        (0 <= args.exploration_noise < math.inf, "--exploration-noise must be >= 0 and finite"),
    )  # fmt: skip


# ── Run plumbing, identical in every script (tests/test_contract.py compares the copies) ────────────────────────


class Diverged(RuntimeError):
    """A loss, parameter or action became NaN or infinite: the run stops and saves no model."""


def fail(msg: str):
    """Bad input: one line on stderr, exit code 2, nothing written."""
    print(f"error: {os.path.basename(__file__)}: {msg}", file=sys.stderr)
    sys.exit(2)


def check(*conditions):
    """fail() with the message of the first (ok, message) pair that is not ok."""
    for ok, msg in conditions:
        if not ok:
            fail(msg)


def check_finite(**tensors):
    """Raise Diverged at the first NaN or inf among the named losses, parameters or actions."""
    for name, x in tensors.items():
        if not torch.isfinite(x).all():
            raise Diverged(f"{name} is not finite: is the learning rate too large?")


def check_spaces(env_id: str, obs_space, act_space, *action_spaces) -> tuple:
    """(ok, message) for check(): flat Box observations and an action space of one of the given types."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        return False, f"needs flat Box observations; {env_id} has {obs_space}"
    kinds = " or ".join(kind.__name__ for kind in action_spaces)
    return isinstance(act_space, action_spaces), f"needs a {kinds} action space; {env_id} has {act_space}"


def env_spaces(env_id: str):
    """Observation and action space of env_id, or a one-line error if it cannot be made."""
    try:
        env = gym.make(env_id)
    except (gym.error.Error, ImportError) as e:
        fail(f"cannot make env '{env_id}': {e}")
    env.close()
    return env.observation_space, env.action_space


def prepare(args: Args):
    """Check the Args before anything is written (the script's check_args, then the common fields); then seed and
    pick the device. Returns (observation space, action space, device)."""
    obs_space, act_space = env_spaces(args.env_id)
    check_args(args, obs_space, act_space)
    check_common(args)
    if args.capture_video:
        check_rendering(args.env_id)
    return obs_space, act_space, setup(args)


def check_common(args: Args):
    check(
        (0 <= args.seed < 2**32, f"--seed {args.seed} must lie in [0, 2^32)"),
        (args.total_timesteps >= 1 and args.eval_episodes >= 0, "--total-timesteps must be >= 1, --eval-episodes >= 0"),
        (args.threads >= 0, f"--threads {args.threads}: give a number of threads, or 0 for torch's default"),
        (args.exp_name.strip(".") and os.path.basename(args.exp_name) == args.exp_name,
         f"--exp-name {args.exp_name!r} must be a plain name, without '/'"),
        (not os.path.exists(args.log_dir) or os.path.isdir(args.log_dir), f"--log-dir {args.log_dir} is not a folder"),
    )  # fmt: skip


def setup(args: Args) -> torch.device:
    """Resolve the device once, set CPU threads and denormal flushing, seed random, numpy and torch."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available() or device == "mps" and not torch.backends.mps.is_available():
        fail(f"--device {device}, but torch sees no such device here; use --device cpu")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # optimiser moments of inactive units decay into denormal floats (< 1e-38), which x86 CPUs compute ~100× slower
    torch.set_flush_denormal(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    return torch.device(device)


def check_rendering(env_id: str):
    """--capture-video: without a display MuJoCo renders off-screen through EGL; refuse early if nothing renders."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = gym.make(env_id, render_mode="rgb_array")
        env.reset(seed=0)
        assert env.render() is not None, "no frame"
        env.close()
    except Exception as e:  # a missing GL library surfaces as any of several error types
        fail(f"--capture-video: {env_id} cannot render here ({type(e).__name__}: {e}); set MUJOCO_GL or drop it")


def make_envs(env_id: str, num_envs: int, video_dir: Optional[str] = None) -> gym.vector.VectorEnv:
    """N copies of env_id stepped in this process, episode statistics in info["episode"].
    SAME_STEP autoreset: the step that ends an episode already returns the next episode's first observation,
    and the true last one is in info["final_obs"], so no transition pairs the end of one episode with the next.
    With video_dir, env i records its first episode (and no other) to video_dir/env-{i}/."""

    def make(i: int):
        def thunk():
            if video_dir is None:
                return gym.make(env_id)
            env = gym.make(env_id, render_mode="rgb_array")
            return gym.wrappers.RecordVideo(env, f"{video_dir}/env-{i}", episode_trigger=lambda ep: ep == 0)

        return thunk

    same_step = gym.vector.AutoresetMode.SAME_STEP
    envs = gym.vector.SyncVectorEnv([make(i) for i in range(num_envs)], autoreset_mode=same_step)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def new_folder(path: str) -> str:
    """Create a folder no other run shares: path, or path-2, path-3, … where that exists already."""
    for candidate in [path] + [f"{path}-{k}" for k in range(2, 1000)]:
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            fail(f"cannot create {candidate}: {e.strerror}")


class Run:
    """One training run: its folder, TensorBoard writer, env-step counter and progress line. As a context manager
    it ends every run by saying where its output went: on Ctrl-C it saves the model (--save-model, marked
    interrupted); on a fault it saves nothing. The writer is flushed and closed either way."""

    def __init__(self, args: Args, model: nn.Module):
        self.args, self.model, self.step, self.start, self.recent_return = args, model, 0, time.time(), float("nan")
        self.interrupted, self.previous_handler = False, None
        self.dir = new_folder(f"{args.log_dir}/{args.env_id}__{args.exp_name}__{args.seed}__{int(self.start)}")
        self.writer, self.line_open = SummaryWriter(self.dir), False
        rows = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + rows, 0)

    def __enter__(self):
        # Ctrl-C only sets a flag, acted on at the next log call: a KeyboardInterrupt raised inside TensorBoard's
        # writer can leave writer.close() waiting two minutes for its queue
        try:
            self.previous_handler = signal.signal(signal.SIGINT, self.interrupt)
        except ValueError:  # only the main thread may set a handler; elsewhere Ctrl-C stays Python's default
            pass
        return self

    def interrupt(self, signum, frame):
        self.interrupted = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def __exit__(self, kind, exc, tb):
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
        self.end_line()
        if kind is KeyboardInterrupt:
            saved = f", model {self.save(interrupted=True)} (interrupted)" if self.args.save_model else ""
            print(f"interrupted at step {self.step:,}: run folder {self.dir}{saved}", file=sys.stderr)
        elif kind is Diverged:  # main prints the one line
            exc.args = (f"{exc} (step {self.step:,}; no model saved, run folder {self.dir})",)
        elif kind is not None:
            print(f"stopped at step {self.step:,} by {kind.__name__}; run folder {self.dir}", file=sys.stderr)
        self.writer.close()

    def log(self, scalars: dict):
        """Scalars at the current env step, and charts/SPS."""
        if self.interrupted:
            raise KeyboardInterrupt
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), self.step)
        self.writer.add_scalar("charts/SPS", self.step / (time.time() - self.start), self.step)

    def log_episodes(self, info: dict):
        """charts/episodic_return and _length of the episodes that ended in this step, from RecordEpisodeStatistics."""
        if self.interrupted:
            raise KeyboardInterrupt
        if "episode" in info:
            self.recent_return = float(info["episode"]["r"][info["_episode"]].mean())
            self.writer.add_scalar("charts/episodic_return", self.recent_return, self.step)
            self.writer.add_scalar("charts/episodic_length", info["episode"]["l"][info["_episode"]].mean(), self.step)

    def progress(self):
        """One self-overwriting line on a terminal: steps, steps per second, recent return, ETA."""
        if self.args.progress and sys.stderr.isatty():
            sps = self.step / max(time.time() - self.start, 1e-9)
            eta = max(self.args.total_timesteps - self.step, 0) / max(sps, 1e-9)
            print(f"\r{self.step:>10,}/{self.args.total_timesteps:,} steps {sps:7,.0f} SPS  return "
                  f"{self.recent_return:8.2f}  ETA {eta:4.0f}s", end="", file=sys.stderr)  # fmt: skip
            self.line_open = True

    def end_line(self):
        if self.line_open:
            print(file=sys.stderr)
            self.line_open = False

    def save(self, interrupted: bool = False) -> str:
        path = os.path.join(self.dir, f"{self.args.exp_name}.pt")
        torch.save({"script": os.path.basename(__file__), "args": asdict(self.args), "model": self.model.state_dict(),
                    "step": self.step, "interrupted": interrupted}, path)  # fmt: skip
        return path

    def finish(self) -> dict:
        """Check the weights, save them (--save-model), evaluate them (--eval-episodes), say where it all went."""
        check_finite(**{f"parameter {n}": p for n, p in self.model.named_parameters()})
        self.end_line()
        args, seconds = self.args, time.time() - self.start
        result = {"run_dir": self.dir, "steps": self.step, "sps": self.step / seconds, "eval_return": float("nan")}
        result["model_path"] = self.save() if args.save_model else None
        if args.eval_episodes > 0:
            video_dir = os.path.join(self.dir, "videos") if args.capture_video else None
            result["eval_return"] = evaluate(self.model.act, args.env_id, args.eval_episodes, args.seed + 10_000,
                                             video_dir)  # fmt: skip
            self.writer.add_scalar("eval/episodic_return", result["eval_return"], self.step)
            print(f"eval/episodic_return {result['eval_return']:.2f} over {args.eval_episodes} deterministic episodes")
        saved = f", model {result['model_path']}" if args.save_model else ""
        skipped = "" if args.eval_episodes else " (evaluation skipped: --eval-episodes 0)"
        print(f"{self.step:,} steps in {seconds:.0f} s{skipped}: run folder {self.dir}{saved}")
        return result


def num_iterations(args: Args, batch: int) -> int:
    """Whole rollouts of `batch` steps in --total-timesteps; says so when that leaves steps out."""
    n = args.total_timesteps // batch
    if n * batch < args.total_timesteps:
        print(f"note: training {n * batch:,} of the {args.total_timesteps:,} steps (whole batches of {batch:,})",
              file=sys.stderr)
    return n


def evaluate(act, env_id: str, episodes: int, seed: int, video_dir: Optional[str] = None) -> float:
    """Mean return of `episodes` episodes (one per env) of the deterministic policy act(obs) -> action. It always
    ends: a non-finite action raises Diverged, and an env without a time limit stops after 10,000 steps."""
    envs = make_envs(env_id, episodes, video_dir)
    obs, _ = envs.reset(seed=seed)
    returns, ended = np.zeros(episodes), np.zeros(episodes, dtype=bool)
    for _ in range(gym.spec(env_id).max_episode_steps or 10_000):
        action = act(obs)
        if not np.isfinite(action).all():
            envs.close()
            raise Diverged("the policy's action is not finite in evaluation")
        obs, reward, terminated, truncated, _ = envs.step(action)
        returns += np.where(ended, 0.0, reward)  # each env's first episode only
        ended |= terminated | truncated
        if ended.all():
            break
    envs.close()
    return float(returns.mean())


def evaluate_saved(args: Args, env_given: bool) -> float:
    """Evaluate a file written by --save-model on its own env for --eval-episodes deterministic episodes."""
    check_common(args)
    check((args.eval_episodes >= 1, "--eval-model needs --eval-episodes >= 1"))
    path, script = args.eval_model, os.path.basename(__file__)
    try:
        ckpt = torch.load(path, map_location="cpu")
    except Exception as e:  # missing, empty and foreign files fail in many ways
        fail(f"cannot load --eval-model {path}: {type(e).__name__} {str(e)[:200]!r}")
    check((isinstance(ckpt, dict) and {"script", "args", "model"} <= set(ckpt), f"{path} is no {script} model file"))
    check((ckpt["script"] == script, f"{path} was saved by {ckpt['script']}: evaluate it with that script"))
    check((not env_given or args.env_id == ckpt["args"]["env_id"], f"{path} was trained on {ckpt['args']['env_id']}"))
    saved = Args(**ckpt["args"])
    model = make_agent(saved, *env_spaces(saved.env_id)).to(setup(args))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        fail(f"{path} does not fit {script}'s networks: {str(e).splitlines()[0]}")
    if args.capture_video:
        check_rendering(saved.env_id)
    video_dir = new_folder(os.path.join(os.path.dirname(path), "videos")) if args.capture_video else None
    eval_return = evaluate(model.act, saved.env_id, args.eval_episodes, args.seed + 10_000, video_dir)
    print(f"eval/episodic_return {eval_return:.2f} over {args.eval_episodes} deterministic episodes of {saved.env_id}"
          + (f"; videos in {video_dir}" if video_dir else ""))  # fmt: skip
    return eval_return


def flag_value(argv: list, flag: str) -> Optional[str]:
    """The value of --flag on a command line (--flag v, --flag=v, or the snake_case spelling), else None."""
    names = (flag, "--" + flag[2:].replace("-", "_"))
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            return argv[i + 1]
        if "=" in a and a.split("=", 1)[0] in names:
            return a.split("=", 1)[1]


def parse_args(argv: Optional[list] = None) -> Args:
    """Args from the command line. A script whose best settings differ by action space declares BOX_DEFAULTS; for
    an env with a Box action space they replace the Discrete defaults, and --help shows the values that will run."""
    argv = sys.argv[1:] if argv is None else argv
    default = Args(env_id=flag_value(argv, "--env-id") or Args.env_id)
    box = globals().get("BOX_DEFAULTS")
    if box and not flag_value(argv, "--eval-model") and isinstance(env_spaces(default.env_id)[1], gym.spaces.Box):
        default = replace(default, **box)
    return tyro.cli(Args, default=default, args=argv)


def main():
    args = parse_args()
    try:
        evaluate_saved(args, flag_value(sys.argv[1:], "--env-id") is not None) if args.eval_model else train(args)
    except KeyboardInterrupt:
        sys.exit(130)  # the Run has said where its output went
    except Diverged as e:
        print(f"error: {os.path.basename(__file__)}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
