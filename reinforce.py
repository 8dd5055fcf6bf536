"""REINFORCE: Monte-Carlo policy gradient over batches of complete episodes, for Discrete and Box action spaces.

Williams 1992; Sutton & Barto 2018, sections 13.3-13.4. Each update runs N episodes to their end with π_θ, uses
them once (on-policy: the estimate below only holds for samples of the current π_θ) and ascends

  ∇J(θ) ≈ (1/N) Σ_i Σ_t ∇ log π_θ(a_t|s_t) (G_t − b(s_t)),    G_t = Σ_{t'≥t} γ^{t'−t} r_{t'}   (reward-to-go)

Reward-to-go: a_t cannot change the rewards that came before it (causality), so leaving them out removes noise,
not signal. Baseline: E[∇ log π(a|s) b(s)] = b(s) ∇ Σ_a π(a|s) = b(s) ∇1 = 0, so b leaves the mean unchanged
but lowers the variance. Without one, always-positive rewards (CartPole's +1 a step) push up every action taken,
and only the sizes of the pushes tell good from bad: "variance is the enemy". --baseline none | mean (b = the
batch's mean G_t) | value (b(s) = V_w(s), fitted by regression to G_t: "REINFORCE with baseline", S&B 13.4).
On a fixed CartPole batch (tests), a fitted V_w cuts the variance of the per-episode gradient estimate to 0.32×.

Discounting, "option 1 vs option 2": the exact gradient of the discounted objective from s_0 weights step t by
γ^t on top of G_t (option 2, --weight-by-gamma-t, S&B's γ^t). Common practice (option 1, the default) drops γ^t:
late steps count as much as early ones, and γ only shortens the horizon of G_t, which lowers its variance. That
is not the gradient of any objective (Nota & Thomas 2020), but it learns better in practice.

The lecture's worked example, five pulls of a 3-armed bandit with softmax logits θ = (1, −1, 0), treats the pulls
as independent one-step episodes (γ = 0, so G_t = r_t): Σ_t r_t ∇ log π(a_t) = (1.013, −1.810, 0.797), which a
test reproduces through the functions below. Read as one episode with γ > 0, each pull's G_t would also count the
rewards of the pulls after it, and the estimate would change (and depend on their order).

Discrete actions: categorical (softmax) policy. Box actions: diagonal Gaussian with state-independent log σ,
actions clipped to the bounds when stepped. Box envs train for 1M steps (BOX_DEFAULTS) instead of 300k.

Usage: python reinforce.py --env-id CartPole-v1 --baseline none
       python reinforce.py --eval-model runs/<run>/reinforce.pt
"""

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
    baseline: Literal["none", "mean", "value"] = "value"  # b(s_t): none, the batch's mean G_t, or a learned V_w(s_t)
    learning_rate: float = 3e-3  # α: Adam step size of π_θ and of V_w
    anneal_lr: bool = True  # decay α linearly to 0: noisy Monte-Carlo gradients need ever smaller steps to settle
    gamma: float = 0.99  # γ: discount factor, typically 0.95-0.999
    weight_by_gamma_t: bool = False  # "option 2": weight step t by γ^t as well (the exact discounted gradient)
    normalize_returns: bool = False  # divide G_t − b(s_t) by its std in each batch (the scale only, not the mean)
    hidden: int = 64  # width of the two hidden layers of the policy and of V_w
    vf_iters: int = 10  # gradient steps of V_w on each batch's G_t (--baseline value): with one, V_w lags far behind

    # The run
    env_id: str = "CartPole-v1"  # gymnasium environment id
    total_timesteps: int = 300_000  # environment steps to train for, rounded up to whole batches (Box: 1M)
    num_envs: int = 16  # N: episodes per batch, one per parallel env
    seed: int = 1  # seed of random, numpy, torch and the environments
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name, part of the run folder's name
    torch_deterministic: bool = True  # set torch.backends.cudnn.deterministic
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto picks cuda, then mps, then cpu
    threads: int = 1  # torch CPU threads (1 is fastest for small networks on CPU); 0 keeps torch's default
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the weights (with any normalisation statistics) and these Args to the run folder
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)


# Used in place of the defaults above when the env's action space is Box.
BOX_DEFAULTS = dict(total_timesteps=1_000_000)


# ── The estimator and its parts, in the order the lecture derives them ──
# log π_θ(a|s) computed in the autograd tape, so that its gradient is the score ∇ log π_θ(a|s).
def categorical_logp(logits, actions):  # log π(a|s) = z_a − log Σ_b exp z_b
    return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def gaussian_logp(mean, log_std, actions):  # log N(a; μ, σ²), summed over the independent action dimensions
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def policy_gradient_loss(logp, weights):
    """−(1/N) Σ_i Σ_t log π_θ(a_t|s_t) Ψ_t for logp and weights of shape (T, N), N episodes.
    This loss means nothing; its gradient is ∇J. Its value is no measure of the policy (it depends on the batch
    and on b); it exists so that autograd, differentiating only through log π, returns −∇J, the estimate above:
    minimising it is gradient ascent on J."""
    return -(logp * weights).sum(0).mean()


def reward_to_go(rewards, gamma: float, bootstrap=None):
    """The Monte-Carlo returns G_t of each episode (column) of rewards (T, N), which are 0 past its end. bootstrap
    (T, N), if given, holds V(s_{t+1}) at the last step of an episode that a time limit cut short, 0 elsewhere: the
    task would have gone on, so the value of the state reached stands in for the rewards that would have followed."""
    if bootstrap is not None:
        rewards = rewards + gamma * bootstrap
    returns, future = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # G_t = r_t + γ G_{t+1}, i.e. Σ_{t'≥t} γ^{t'−t} r_{t'}: only the rewards that a_t can influence
        future = rewards[t] + gamma * future
        returns[t] = future
    return returns


def baseline_values(kind: str, returns, values, alive):
    """b(s_t): 0, the batch mean of G_t over the steps of its episodes, or V_w(s_t). Any b that does not depend
    on a_t leaves the gradient unbiased; V_w is detached, since b must not carry a gradient of its own."""
    if kind == "mean":
        return returns[alive].mean()
    return values.detach() if kind == "value" else torch.zeros_like(returns)


def pg_weights(returns, b, alive, gamma: float, weight_by_gamma_t: bool, normalize: bool):
    """Ψ_t, the weight of ∇ log π(a_t|s_t): G_t − b(s_t), times γ^t for option 2, optionally divided by its std
    over the batch, and 0 past each episode's end. Constant in θ: only log π carries the gradient."""
    weights = returns - b
    if weight_by_gamma_t:  # option 2: γ^t G_t = Σ_{t'≥t} γ^{t'} r_{t'}, the reward-to-go discounted from s_0
        weights = weights * gamma ** torch.arange(len(weights), device=weights.device).unsqueeze(1)
    if normalize:  # a common scale across batches; subtracting the mean too would be a mean baseline in disguise
        weights = weights / (weights[alive].std() + 1e-8)
    return weights * alive


def value_loss(values, returns, alive):
    """Mean of (V_w(s_t) − G_t)² over the steps of the batch's episodes: V_w regresses on the Monte-Carlo G_t."""
    return ((values - returns) ** 2)[alive].mean()


# ── Networks ──
def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain `std` and a constant bias, as in OpenAI baselines' PPO."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(n_in: int, n_out: int, hidden: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_in, hidden)), nn.Tanh(), layer_init(nn.Linear(hidden, hidden)),
                         nn.Tanh(), layer_init(nn.Linear(hidden, n_out), std=out_std))  # fmt: skip


class Agent(nn.Module):
    """The policy π_θ (softmax logits, or the Gaussian mean with a free log σ) and, for --baseline value, a
    separate critic V_w(s) with a linear output (values are unbounded)."""

    def __init__(self, obs_space, act_space, hidden: int, with_value: bool):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim, act_dim = obs_space.shape[0], act_space.n if self.discrete else act_space.shape[0]
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)  # starts near uniform π, or μ ≈ 0
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0) if with_value else None
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32))

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def logp(self, obs, actions):
        """log π_θ(a|s), in the tape."""
        out = self.actor(obs)
        return categorical_logp(out, actions) if self.discrete else gaussian_logp(out, self.log_std, actions)

    def sample(self, obs):
        """a ~ π_θ(·|s)."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample of softmax(z), ~2.5× faster
            # than torch.multinomial on a small batch
            return (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped to the bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.actor[0].weight.device)
        out = self.actor(obs)
        return (out.argmax(-1) if self.discrete else out.clamp(self.low, self.high)).cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Agent:
    return Agent(obs_space, act_space, args.hidden, args.baseline == "value")


# ── Training: N complete episodes with π_θ → G_t, b(s_t), Ψ_t → one gradient step → log ──
@dataclass
class Episodes:
    """One complete episode per env, padded to the longest, T steps; every tensor is (T, N) unless noted."""

    obs: torch.Tensor  # s_t, (T, N, obs_dim)
    actions: torch.Tensor  # a_t as sampled, before clipping to the bounds: (T, N) or (T, N, act_dim)
    rewards: torch.Tensor  # r_t, 0 past each episode's end
    alive: torch.Tensor  # True up to each episode's last step, then False
    final_obs: torch.Tensor  # s_T, the true observation after each episode's last step, (N, obs_dim)
    cut: torch.Tensor  # (N,) True where a time limit ended the episode (truncated, not terminated)

    def truncation_bootstrap(self, value) -> Optional[torch.Tensor]:
        """(T, N): V(s_T) at the last step of each episode that a time limit cut short, 0 elsewhere (None if none
        was): a time limit is not the end of the task, so G_t bootstraps from the value of the state reached."""
        if not self.cut.any():
            return None
        bootstrap = torch.zeros_like(self.rewards)
        with torch.no_grad():
            bootstrap[self.alive.sum(0)[self.cut] - 1, self.cut.nonzero().squeeze(1)] = value(self.final_obs[self.cut])
        return bootstrap


def run_episodes(envs, agent: Agent, run) -> Episodes:
    """One complete episode per env with the current π_θ. The envs step together until the longest episode ends;
    an env whose episode is over keeps stepping (a vector env steps all or none), but those steps are masked out:
    not used, not counted in run.step and not logged. Taking exactly one episode per env keeps the batch an i.i.d.
    sample of episodes (stopping at the first K episodes to end would favour short ones)."""
    device = agent.actor[0].weight.device
    obs, _ = envs.reset()
    alive = np.ones(envs.num_envs, dtype=bool)
    final_obs, cut = np.zeros(obs.shape, dtype=np.float32), np.zeros(envs.num_envs, dtype=bool)
    steps = []  # (s_t, a_t, r_t, alive_t) of the N envs
    while alive.any():
        with torch.inference_mode():
            action = agent.sample(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        # the env gets a legal action; π keeps the sampled one for log π(a|s)
        space = envs.single_action_space
        legal = action if agent.discrete else np.clip(action, space.low, space.high)
        next_obs, reward, terminated, truncated, info = envs.step(legal)
        steps.append((obs, action, reward * alive, alive.copy()))
        obs = next_obs
        run.step += int(alive.sum())
        ended = alive & (terminated | truncated)
        if ended.any():  # SAME_STEP autoreset: obs already starts a new episode; s_T is in final_obs
            final_obs[ended], cut[ended] = np.stack(info["final_obs"][ended]), ~terminated[ended]
            run.log_episodes({"episode": info["episode"], "_episode": ended})  # only the episodes of the batch
            alive &= ~ended
    obs, actions, rewards, alive = zip(*steps)
    batch = (np.stack(obs, dtype=np.float32), np.stack(actions), np.stack(rewards, dtype=np.float32),
             np.stack(alive), final_obs, cut)  # fmt: skip
    return Episodes(*(torch.as_tensor(x, device=device) for x in batch))


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    envs.reset(seed=args.seed)  # seeds the envs once; each batch then starts fresh episodes from that stream
    agent = make_agent(args, obs_space, act_space).to(device)
    # fused=True: one kernel for all parameters, ~4x faster steps than the default on CPU
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, fused=True)
    with Run(args, agent) as run:
        while run.step < args.total_timesteps:  # the last batch may end past --total-timesteps
            lr = args.learning_rate * (1.0 - run.step / args.total_timesteps if args.anneal_lr else 1.0)
            optimizer.param_groups[0]["lr"] = lr

            # ---- N complete episodes with π_θ ----
            ep = run_episodes(envs, agent, run)
            run.progress()

            # ---- G_t (bootstrapped where a time limit cut the episode, given a V_w), b(s_t), Ψ_t ----
            values = agent.value(ep.obs) if agent.critic is not None else None  # V_w(s_t), (T, N), in the tape
            bootstrap = ep.truncation_bootstrap(agent.value) if values is not None else None
            returns = reward_to_go(ep.rewards, args.gamma, bootstrap)
            b = baseline_values(args.baseline, returns, values, ep.alive)
            weights = pg_weights(returns, b, ep.alive, args.gamma, args.weight_by_gamma_t, args.normalize_returns)

            # ---- one step on −J (and V_w's regression on G_t), then vf_iters − 1 more steps of V_w alone ----
            pg_loss = policy_gradient_loss(agent.logp(ep.obs, ep.actions), weights)
            v_loss = value_loss(values, returns, ep.alive) if values is not None else torch.zeros((), device=device)
            check_finite(policy_loss=pg_loss, value_loss=v_loss)
            optimizer.zero_grad(set_to_none=True)
            (pg_loss + v_loss).backward()
            optimizer.step()
            for _ in range(args.vf_iters - 1 if values is not None else 0):
                optimizer.zero_grad(set_to_none=True)
                value_loss(agent.value(ep.obs), returns, ep.alive).backward()
                optimizer.step()

            # ---- log ----
            # RMS of Ψ_t = G_t − b(s_t): the scale of each term of the gradient estimate, which a baseline shrinks
            # (a std would not show it: subtracting the batch mean leaves the std of G_t unchanged)
            stats = {"losses/policy_loss": pg_loss.item(), "charts/learning_rate": lr,
                     "diagnostics/weights_rms": weights[ep.alive].square().mean().sqrt().item()}  # fmt: skip
            if values is not None:
                stats["losses/value_loss"] = v_loss.item()
            run.log(stats)
        envs.close()
        return run.finish()


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, what cannot work."""
    check(
        check_spaces(args.env_id, obs_space, act_space, gym.spaces.Discrete, gym.spaces.Box),
        (min(args.num_envs, args.hidden, args.vf_iters) >= 1, "--num-envs, --hidden and --vf-iters must be >= 1"),
        (0 <= args.gamma <= 1, "--gamma must lie in [0, 1]"),
        (0 < args.learning_rate < math.inf, "--learning-rate must be positive and finite"),
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
