"""Deep Deterministic Policy Gradient, for bounded Box action spaces.

DDPG (Lillicrap et al. 2016, arXiv:1509.02971) is DQN's critic with a deterministic
actor μ_θ(s) in place of the max over actions. It is off-policy: the critic's target
needs only (s, a, r, s', term) from a replay buffer and the target actor at s', never
the probability of the stored a, so data from any earlier (noisier) policy serves.

  y     = r + γ (1 − term) Q_θ⁻(s', μ_θ⁻(s'))       target critic and actor, θ⁻
  L_Q   = Ê[(Q_θ(s, a) − y)²]                       critic regression
  ∇_θ J = Ê[∇_a Q(s, a)|_{a=μ_θ(s)} ∇_θ μ_θ(s)]     deterministic policy gradient
  a_t   = clip(μ_θ(s_t) + ε, −1, 1),  ε ~ N(0, σ²)  Gaussian exploration noise
  θ⁻    ← τ θ + (1 − τ) θ⁻                          Polyak-averaged targets, both nets

The deterministic policy gradient is Silver et al.'s (2014). The actor and the targets
are updated after every critic step, as in DDPG; --policy-frequency d > 1 delays them to
every d-th step, as TD3 does. The policy lives in [−1, 1]^|A| (tanh output) and actions
are rescaled affinely to the env's bounds when stepped, so σ is a fraction of the
half-range of each action. Defaults: CleanRL's MuJoCo settings (batch 256, 256×256 nets,
buffer 1e6, lr 3e-4, σ = 0.1), with d = 1 and 5k random steps (CleanRL's 25k would leave
a 30k-step run 5k steps of learning; 5k is sac_continuous.py's, and InvertedPendulum
needs ~20k).

Usage: python ddpg.py --env-id Hopper-v5
       python ddpg.py --env-id HalfCheetah-v5 --seed 3
       python ddpg.py --eval-model runs/<run>/ddpg.pt
"""

import contextlib
import copy
import importlib
import io
import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional

if __name__ == "__main__":  # Ctrl-C while the libraries below load: exit quietly
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (FIFO); typically 1e5-1e6"""
    learning_starts: int = 5_000
    """env steps of uniformly random actions before any update; typically 1k-25k"""
    batch_size: int = 256
    """transitions per gradient step, sampled uniformly; typically 64-256"""
    gamma: float = 0.99
    """γ: discount factor; typically 0.98-0.999"""
    tau: float = 0.005
    """τ: Polyak rate of the targets, θ⁻ ← τθ + (1 − τ)θ⁻; typically 0.001-0.01"""
    learning_rate: float = 3e-4
    """Adam step size of the actor and of the critic; typically 1e-4-1e-3"""
    exploration_noise: float = 0.1
    """σ: std of the action noise, in half-ranges of the action; typically 0.1-0.2"""
    policy_frequency: int = 1
    """d: actor and target updates every d critic steps; 1 as in DDPG, 2 in TD3"""
    hidden: int = 256
    """width of both hidden layers of actor and critic; typically 256 (DDPG: 400-300)"""

    # The run
    env_id: str = "Hopper-v5"
    """gymnasium environment id"""
    total_timesteps: int = 1_000_000
    """environment steps to train for, rounded up to whole iterations"""
    num_envs: int = 1
    """N: parallel environments"""
    seed: int = 1
    """seed of random, numpy, torch and the environments"""
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """experiment name, part of the run folder's name"""
    torch_deterministic: bool = True
    """set torch.backends.cudnn.deterministic"""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto picks cuda, then mps, then cpu"""
    threads: int = 1
    """CPU threads, 0: torch's; 2 ran 1.3× faster on idle cores, 2-4× slower if busy"""
    log_dir: str = "runs"
    """TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}"""
    log_every: int = 1_000
    """log the losses every this many environment steps (they cost a sync)"""
    save_model: bool = False
    """save the weights, normalisation statistics and these Args to the run folder"""
    eval_model: Optional[str] = None
    """a file saved by --save-model: evaluate it and exit, no training"""
    eval_episodes: int = 10
    """deterministic evaluation episodes after training (0 skips them)"""
    capture_video: bool = False
    """record the evaluation episodes to {run_dir}/videos"""
    progress: bool = True
    """show a progress line (only when stderr is a terminal)"""


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, what DDPG cannot run."""
    env = args.env_id
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations (an MLP's input); {env} has {obs_space}")
    box = isinstance(act_space, gym.spaces.Box)
    check(box, f"needs a Box action space; {env} has {act_space}")
    # μ_θ(s) ∈ [−1, 1]^|A| is rescaled onto the box: its bounds must be finite
    bounded = np.isfinite(np.r_[act_space.low, act_space.high]).all()
    check(bounded, f"needs a bounded Box action space; {env} has {act_space}")
    N = args.num_envs
    check(N >= 1, f"--num-envs {N} must be >= 1")
    check(args.batch_size >= 1, f"--batch-size {args.batch_size} must be >= 1")
    d = args.policy_frequency
    check(d >= 1, f"--policy-frequency {d} must be >= 1")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    starts = args.learning_starts
    total = args.total_timesteps
    check(starts >= 0, f"--learning-starts {starts} must be >= 0")
    below = f"--learning-starts {starts} must be below --total-timesteps {total}"
    check(starts < total, below + ", or no update would run")
    size = args.buffer_size
    batch = args.batch_size
    check(size >= batch, f"--buffer-size {size} is below --batch-size {batch}")
    check(size >= N, f"--buffer-size {size} is below --num-envs {N}")
    check(0 <= args.gamma <= 1, f"--gamma {args.gamma} must lie in [0, 1]")
    check(0 < args.tau <= 1, f"--tau {args.tau} must lie in (0, 1]")
    lr = args.learning_rate
    check(math.isfinite(lr) and lr > 0, f"--learning-rate {lr} must be finite and > 0")
    sigma = args.exploration_noise
    sigma_ok = math.isfinite(sigma) and sigma >= 0
    check(sigma_ok, f"--exploration-noise {sigma} must be finite and >= 0")


# ── The target and the losses, in the order the lecture derives them ──
def td_target(rewards, terminations, next_q, gamma: float):
    """y for a batch, with next_q = Q_θ⁻(s', μ_θ⁻(s')) from the target networks: a fixed
    regression target, no gradient. A terminal s' has value 0; a time-limit truncation
    was stored with term = 0 and its true s', so it bootstraps."""
    # y = r + γ (1 − term) Q_θ⁻(s', μ_θ⁻(s'))
    return rewards + gamma * (1.0 - terminations) * next_q


def critic_loss(q, y):
    """L_Q = Ê[(Q_θ(s, a) − y)²], with y held fixed."""
    return ((q - y) ** 2).mean()


def actor_loss(q_mu):
    """−Ê[Q(s, μ_θ(s))]: minimising it ascends Q along the actor's output. Autograd's
    chain rule through a = μ_θ(s) gives exactly the deterministic policy gradient
    Ê[∇_a Q(s, a)|_{a=μ_θ(s)} ∇_θ μ_θ(s)]."""
    return -q_mu.mean()


@torch.no_grad()  # θ⁻ moves toward θ outside autograd: no gradient step
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """θ⁻ ← τ θ + (1 − τ) θ⁻ for every target parameter (ρ = 1 − τ in Igel's Deep RL
    deck, "Delayed Q update")."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


# ── Networks, the replay buffer and the envs ──
def scale_action(a, low, high):
    """Map a ∈ [−1, 1]^|A| affinely onto the env's box [low, high]."""
    return low + (a + 1.0) * 0.5 * (high - low)


# ReLU layers with PyTorch's default init, U(±1/√fan_in), as in the DDPG and TD3
# papers' networks; the on-policy scripts' tanh layers with orthogonal layer_init
# follow OpenAI baselines' PPO instead.
def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, n_out),
    )


class Actor(nn.Module):
    """μ_θ(s) = tanh(MLP(s)) ∈ [−1, 1]^|A|: deterministic; rescaled to the env's bounds
    only when stepped."""

    def __init__(self, obs_dim: int, act_space: gym.spaces.Box, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, act_space.shape[0], hidden)
        low = torch.as_tensor(act_space.low, dtype=torch.float32)
        high = torch.as_tensor(act_space.high, dtype=torch.float32)
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, obs):
        return torch.tanh(self.net(obs))

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: μ(s) without noise, rescaled to the
        env's bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.low.device)
        return scale_action(self(obs), self.low, self.high).cpu().numpy()


class QNetwork(nn.Module):
    """Q_θ(s, a): an MLP of the concatenated state and action, with a linear output
    (Q-values are unbounded)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs, actions):
        return self.net(torch.cat([obs, actions], dim=-1)).squeeze(-1)


def make_agent(args: Args, obs_space, act_space) -> Actor:
    """The actor: what --save-model saves and evaluation runs (the critic only serves
    training)."""
    return Actor(obs_space.shape[0], act_space, args.hidden)


class ReplayBuffer:
    """Experience replay: a preallocated FIFO ring of transitions (s, a, r, s', term),
    sampled uniformly; obs and next_obs are (capacity, *obs_shape), actions (capacity,
    *act_shape), rewards and terminations (capacity,). Only `terminated` is stored: a
    truncated transition keeps its true s' and bootstraps like any other."""

    def __init__(self, capacity: int, obs_shape, act_shape, act_dtype, device):
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((capacity, *act_shape), dtype=act_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.device = device
        # the next slot to write, and how many slots hold a transition
        self.pos = 0
        self.size = 0

    def add(self, obs, actions, rewards, next_obs, terminations):
        """Store one transition per env (arrays with a leading N axis); once the buffer
        is full, the oldest are overwritten."""
        n = len(obs)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_obs[idx] = next_obs
        self.terminations[idx] = terminations
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int):
        """A uniform minibatch (with replacement) of the filled slots, as tensors
        (s, a, r, s', term)."""
        idx = np.random.randint(0, self.size, size=batch_size)
        data = (self.obs, self.actions, self.rewards, self.next_obs, self.terminations)
        return tuple(torch.as_tensor(x[idx], device=self.device) for x in data)


def make_envs(env_id: str, num_envs: int, video_dir: Optional[str] = None):
    """N copies of env_id stepped in this process, with info["episode"] statistics.

    SAME_STEP autoreset: the step that ends an episode already returns the next
    episode's first observation, and the true last one is in info["final_obs"], so no
    transition pairs the end of one episode with the start of the next. With
    video_dir, env i records its first episode (and no other) to video_dir/env-{i}/."""

    def make(i: int):
        def thunk():
            if video_dir is None:
                return gym.make(env_id)
            env = gym.make(env_id, render_mode="rgb_array")
            folder = f"{video_dir}/env-{i}"
            # RecordVideo imports its writer when the first episode ends; import it
            # now, before any episode: a Ctrl-C inside an import can be lost there
            importlib.import_module("moviepy.video.io.ImageSequenceClip")
            return gym.wrappers.RecordVideo(env, folder, lambda episode: episode == 0)

        return thunk

    same_step = gym.vector.AutoresetMode.SAME_STEP
    thunks = [make(i) for i in range(num_envs)]
    envs = gym.vector.SyncVectorEnv(thunks, autoreset_mode=same_step)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def final_observations(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """s_{t+1} of each env's transition. Under SAME_STEP autoreset an env whose episode
    just ended already returns the next episode's first observation; its true last
    observation is in info["final_obs"]."""
    real_next_obs = next_obs.copy()
    if "final_obs" in info:
        ended = info["_final_obs"]
        real_next_obs[ended] = np.stack(info["final_obs"][ended])
    return real_next_obs


@torch.no_grad()
def explore(actor: Actor, obs: np.ndarray, sigma: float) -> np.ndarray:
    """a = clip(μ_θ(s) + ε, −1, 1), ε ~ N(0, σ²): the actor's action with Gaussian
    exploration noise, kept inside [−1, 1]^|A|."""
    device = actor.low.device
    mu = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
    noisy = mu + sigma * torch.randn_like(mu)
    return noisy.clamp(-1.0, 1.0).cpu().numpy()


# ── Training: act with noise → store → sample → y → critic, actor and target steps ──
def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    N = args.num_envs
    act_dim = act_space.shape[0]
    actor = make_agent(args, obs_space, act_space).to(device)
    qf = QNetwork(obs_space.shape[0], act_dim, args.hidden).to(device)
    # the target networks θ⁻: slowly moving copies that y is computed from, never
    # trained by gradient
    actor_target = copy.deepcopy(actor).requires_grad_(False)
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    # fused=True: one kernel for all parameters of an optimizer, several times faster
    # steps on CPU
    lr = args.learning_rate
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=lr, fused=True)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=lr, fused=True)
    obs_shape = obs_space.shape
    act_shape = act_space.shape
    rb = ReplayBuffer(args.buffer_size, obs_shape, act_shape, np.float32, device)
    # one env step per env in each iteration, one gradient step after it
    iterations = math.ceil(args.total_timesteps / N)
    obs, _ = envs.reset(seed=args.seed)
    stats = {}
    with Run(args, actor) as run:
        for iteration in range(iterations):
            # ---- act: at random while the buffer fills, then μ_θ(s) + ε ----
            warmup = run.step + N <= args.learning_starts
            if warmup:
                actions = np.random.uniform(-1.0, 1.0, (N, act_dim)).astype(np.float32)
            else:
                actions = explore(actor, obs, args.exploration_noise)
            env_actions = scale_action(actions, act_space.low, act_space.high)
            next_obs, rewards, terminations, _, info = envs.step(env_actions)
            # ---- store (s, a, r, s', term), with the true s' of an ended episode ----
            # (a truncation is stored with term = 0: its target bootstraps)
            real_next_obs = final_observations(next_obs, info)
            rb.add(obs, actions, rewards, real_next_obs, terminations)
            obs = next_obs
            run.step += N
            run.log_episodes(info)
            # asked every iteration: due() is also where a Ctrl-C stops training
            log_due = run.due()
            if warmup:
                continue

            # ---- critic: regress Q_θ(s, a) onto y from the target networks ----
            batch = rb.sample(args.batch_size)
            b_obs, b_actions, b_rewards, b_next_obs, b_terminations = batch
            with torch.no_grad():
                # Q_θ⁻(s', μ_θ⁻(s')): the target critic at the target actor's action
                next_q = qf_target(b_next_obs, actor_target(b_next_obs))
            # y = r + γ (1 − term) Q_θ⁻(s', μ_θ⁻(s'))
            y = td_target(b_rewards, b_terminations, next_q, args.gamma)
            q = qf(b_obs, b_actions)
            # L_Q = Ê[(Q_θ(s, a) − y)²]
            qf_loss = critic_loss(q, y)
            check_finite(critic_loss=qf_loss)
            q_optimizer.zero_grad(set_to_none=True)
            qf_loss.backward()
            q_optimizer.step()

            # ---- actor, then the targets: every d-th iteration (DDPG: d = 1) ----
            if (iteration + 1) % args.policy_frequency == 0:
                # the actor's loss moves μ's θ only: Q is a constant (no weight grads)
                qf.requires_grad_(False)
                # −Ê[Q_θ(s, μ_θ(s))]: its gradient is the deterministic policy gradient
                pi_loss = actor_loss(qf(b_obs, actor(b_obs)))
                qf.requires_grad_(True)
                check_finite(actor_loss=pi_loss)
                actor_optimizer.zero_grad(set_to_none=True)
                pi_loss.backward()
                actor_optimizer.step()
                # θ⁻ ← τ θ + (1 − τ) θ⁻, for the actor and the critic
                polyak_update(actor_target, actor, args.tau)
                polyak_update(qf_target, qf, args.tau)
                stats["losses/actor_loss"] = pi_loss.detach()

            # ---- log: read the tensors (a host sync on a GPU) only when due ----
            if log_due:
                stats["losses/qf_loss"] = qf_loss.detach()
                stats["diagnostics/q_values"] = q.detach().mean()
                run.log(stats)
                run.progress()
        envs.close()
        return run.finish()


# ── Run plumbing, identical in every script (tests/test_contract.py compares them) ──
# It gives the code above prepare (checks, seeding, device), Run (run folder, writer,
# progress line, Ctrl-C, save, evaluate), check and check_finite. It needs from there
# Args, check_args, make_agent (a model with .act), make_envs, train, BOX_DEFAULTS.


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: {os.path.basename(__file__)}: {msg}", file=sys.stderr)
        sys.exit(2)


def check_finite(**tensors):
    for name, x in tensors.items():
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{name} is not finite: learning rate too large?")


def env_spaces(env_id: str):
    # MuJoCo warns of gymnasium's own model files, per env and into ./MUJOCO_LOG.TXT
    if "mujoco" in str(gym.registry.get(env_id)):  # a diverging run stops on NaN
        importlib.import_module("mujoco").set_mju_user_warning(lambda text: None)
    try:
        with warnings.catch_warnings(action="ignore"):  # no warning before the line
            env = gym.make(env_id)
    except (gym.error.Error, ImportError) as e:
        check(False, f"cannot make env '{env_id}': {e}")
    env.close()
    return env.observation_space, env.action_space


def prepare(args: Args):
    """Check the Args before writing anything, seed, pick the device (auto: GPU)."""
    obs_space, act_space = env_spaces(args.env_id)
    check_args(args, obs_space, act_space)
    check(0 <= args.seed < 2**32, f"--seed {args.seed} must lie in [0, 2^32)")
    check(args.total_timesteps >= 1, "--total-timesteps must be >= 1")
    check(args.eval_episodes >= 0, f"--eval-episodes {args.eval_episodes} must be >= 0")
    check(0 <= args.threads <= 256, f"--threads {args.threads} is not in [0, 256]")
    check(args.log_every >= 1, f"--log-every {args.log_every} must be >= 1")
    check(args.log_dir.strip() != "", "--log-dir '': name a folder (default: runs)")
    plain = os.path.basename(args.exp_name) == args.exp_name.strip(".")[:99]
    check(plain, "--exp-name: a name without '/', under 100 characters")
    accelerator = torch.accelerator.current_accelerator()  # cuda or mps, if any
    found = ["cpu"] if accelerator is None else ["cpu", accelerator.type]
    device = found[-1] if args.device == "auto" else args.device
    check(device in found, f"--device {device}: torch sees none here; use cpu")
    if args.capture_video:  # refuse early what cannot render (MuJoCo: through EGL)
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame needs no display
        try:  # a missing GL library surfaces as many error types
            env = gym.make(args.env_id, render_mode="rgb_array")
            env.reset(seed=0)
            check(env.render() is not None, "--capture-video: the env renders nothing")
        except Exception as e:
            check(False, f"--capture-video: cannot render ({type(e).__name__}: {e})")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Adam's moments of idle units decay into denormals (< 1e-38): ~100× slower on x86
    torch.set_flush_denormal(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    return obs_space, act_space, torch.device(device)


def new_folder(path: str) -> str:
    """Create a folder no other run shares: path, or path-2, path-3, … if it exists."""
    for candidate in [path] + [f"{path}-{k}" for k in range(2, 1000)]:
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:  # --log-dir is a file, or may not be written
            check(False, f"cannot create {candidate} ({e.strerror}): check --log-dir")


class Run(contextlib.AbstractContextManager):
    """A training run: folder, writer, step counter, progress line, saving, Ctrl-C."""

    def __init__(self, args: Args, model: nn.Module):
        self.args = args
        self.model = model
        self.step = 0
        self.next_log = 0
        self.start = time.time()
        self.last_return = math.nan
        self.interrupted = False
        name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(self.start)}"
        self.dir = new_folder(os.path.join(args.log_dir, name))
        self.model_path = os.path.join(self.dir, f"{args.exp_name}.pt")
        self.writer = SummaryWriter(self.dir)
        rows = "".join(f"\n|{k}|{v}|" for k, v in asdict(args).items())
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|" + rows, 0)
        self.previous_handler = signal.signal(signal.SIGINT, self.interrupt)

    def interrupt(self, signum, frame):
        """Ctrl-C: stop now, or at the next due() inside TensorBoard (it can hang)."""
        self.interrupted = True
        while frame and "tensorboard" not in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is None:
            raise KeyboardInterrupt

    def __exit__(self, kind, exc, tb):
        """Save the model (--save-model), close the writer, say where it all went."""
        signal.signal(signal.SIGINT, self.previous_handler)
        self.progress(end=True)
        where = f"run folder {self.dir}"
        if self.args.save_model and kind in (None, KeyboardInterrupt):
            ckpt = dict(script=os.path.basename(__file__), args=asdict(self.args))
            ckpt.update(model=self.model.state_dict(), step=self.step)
            torch.save(dict(ckpt, interrupted=self.interrupted), self.model_path)
            where += f", model {self.model_path}" + " (interrupted)" * self.interrupted
        self.writer.close()
        if kind is FloatingPointError:  # main prints the one line
            exc.args = (f"{exc} (step {self.step:,}; no model saved, {where})",)
        elif kind is KeyboardInterrupt:
            print(f"interrupted at step {self.step:,}: {where}", file=sys.stderr)
        elif kind is None:
            print(f"{self.step:,} steps in {time.time() - self.start:.0f} s: {where}")

    def due(self) -> bool:
        """True now and every --log-every steps after; a deferred Ctrl-C stops here."""
        if self.interrupted:
            raise KeyboardInterrupt
        if self.step < self.next_log:
            return False
        self.next_log = self.step + self.args.log_every
        return True

    def log(self, scalars: dict):
        scalars["charts/SPS"] = self.step / (time.time() - self.start)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), self.step)

    def log_episodes(self, info: dict):
        """charts/episodic_return and _length of the episodes that ended this step."""
        if "episode" in info:
            ended = info["_episode"]
            episode = {k: v[ended].mean() for k, v in info["episode"].items()}
            self.last_return = float(episode["r"])
            self.writer.add_scalar("charts/episodic_return", episode["r"], self.step)
            self.writer.add_scalar("charts/episodic_length", episode["l"], self.step)

    def progress(self, end: bool = False):
        """One self-overwriting line on a terminal: steps, SPS, recent return, ETA."""
        if self.args.progress and sys.stderr.isatty():
            sps = self.step / max(time.time() - self.start, 1e-9)
            eta = max(self.args.total_timesteps - self.step, 0) / max(sps, 1e-9)
            line = f"\r{self.step:>10,} steps {sps:7,.0f} SPS"
            line += f"  return {self.last_return:8.2f}  ETA {eta:4.0f}s\033[K"
            print("\r\033[K" if end else line, end="", file=sys.stderr)

    def finish(self) -> dict:
        """Check the weights, then evaluate them (--eval-episodes)."""
        self.due()  # a Ctrl-C deferred in the last log stops here
        check_finite(**{f"parameter {n}": p for n, p in self.model.named_parameters()})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.progress(end=True)
        ret = math.nan
        if self.args.eval_episodes > 0:
            ret = evaluate(self.model.act, self.args, os.path.join(self.dir, "videos"))
            self.writer.add_scalar("eval/episodic_return", ret, self.step)
        sps = self.step / (time.time() - self.start)
        result = dict(run_dir=self.dir, steps=self.step, sps=sps, eval_return=ret)
        result["model_path"] = self.model_path if self.args.save_model else None
        return result


def evaluate(act, args: Args, video_dir: str) -> float:
    """Mean return of the deterministic act(obs) over --eval-episodes episodes."""
    n = args.eval_episodes
    envs = make_envs(args.env_id, n, video_dir if args.capture_video else None)
    obs, _ = envs.reset(seed=args.seed + 10_000)
    returns = np.zeros(n)
    ended = np.zeros(n, dtype=bool)
    # it always ends: an env without a time limit stops after 10,000 steps
    for _ in range(gym.spec(args.env_id).max_episode_steps or 10_000):
        action = act(obs)
        if not np.isfinite(action).all():
            raise FloatingPointError("the policy's action is not finite in evaluation")
        obs, reward, terminated, truncated, _ = envs.step(action)
        returns += np.where(ended, 0.0, reward)  # each env's first episode only
        ended |= terminated | truncated
        if ended.all():
            break
    envs.close()
    print(f"eval/episodic_return {returns.mean():.2f} over {n} episodes")
    return float(returns.mean())


def evaluate_saved(args: Args):
    """Evaluate a file written by --save-model on its own env (--eval-episodes)."""
    check(args.eval_episodes >= 1, "--eval-model needs --eval-episodes >= 1")
    path = args.eval_model
    script = os.path.basename(__file__)
    run = ["seed", "device", "threads", "eval_episodes", "capture_video"]
    try:  # missing, empty and foreign files fail in many ways: one line, no warning
        with warnings.catch_warnings(action="ignore"):
            ckpt = torch.load(path, map_location="cpu")
            check(ckpt["script"] == script, f"{path} was saved by {ckpt['script']}")
            # the saved settings, with this command line's run fields
            saved = replace(Args(**ckpt["args"]), **{f: getattr(args, f) for f in run})
            same_env = args.env_id in (Args.env_id, saved.env_id)
            check(same_env, f"{path} was trained on {saved.env_id}: drop --env-id")
            obs_space, act_space, device = prepare(saved)
            model = make_agent(saved, obs_space, act_space).to(device)
            model.load_state_dict(ckpt["model"])
    except Exception as e:
        check(False, f"cannot evaluate {path}: {type(e).__name__}: {str(e)[:200]}")
    videos = os.path.join(os.path.dirname(path), "videos")
    evaluate(model.act, saved, new_folder(videos) if args.capture_video else None)


def parse_args(argv: list) -> Args:
    """Args, with BOX_DEFAULTS for a Box action space; a tyro error in one line."""
    pairs = dict(zip(argv, argv[1:])) | dict(a.split("=", 1) for a in argv if "=" in a)
    default = Args(env_id=pairs.get("--env-id", Args.env_id))
    box = globals().get("BOX_DEFAULTS")
    if box and isinstance(env_spaces(default.env_id)[1], gym.spaces.Box):
        default = replace(default, **box)
    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text):  # --help goes to stdout, errors here
            return tyro.cli(Args, default=default, args=argv)
    except SystemExit:  # tyro's box: a title, what is wrong, help, "For full helptext…"
        lines = [line.strip(" │") for line in text.getvalue().splitlines()]
        msg = " ".join(line for line in lines if line[:1] not in "╭╰─")
        msg = msg.split(" For full helptext")[0].replace(" Argument helptext:", ";")
        check(not lines, msg.replace(" Perhaps you meant:", "; did you mean"))
        raise  # after --help


def main():
    args = parse_args(sys.argv[1:])
    try:
        if args.eval_model:
            evaluate_saved(args)
        else:
            train(args)
    except KeyboardInterrupt:
        sys.exit(130)  # the Run has said where its output went
    except FloatingPointError as e:
        print(f"error: {os.path.basename(__file__)}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
