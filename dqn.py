"""DQN: deep Q-learning with experience replay and a target network, for Discrete action spaces.

Deep Q-Network (Mnih et al. 2015, Nature 518:529), with n-step targets (Sutton & Barto 2018, ch. 7; Hessel et al.
2018, arXiv:1710.02298; n = 6 by default, 1 is the paper's) and Double DQN as an option (van Hasselt et al. 2016,
arXiv:1509.06461). Off-policy: ε-greedy actions fill a replay buffer of transitions (s, a, r, s', term), and the
Q-network is fitted to bootstrapped targets on uniform minibatches of it ("mini-batch Q-learning"):

  y        = r + γ (1 − term) max_a' Q_θ⁻(s', a')                  td_target; a terminal s' has value 0
  y_double = r + γ (1 − term) Q_θ⁻(s', argmax_a' Q_θ(s', a'))       the online net picks a', θ⁻ evaluates it
  y_n      = R_t^(n) + γ^n (1 − term) max_a' Q_θ⁻(s_{t+n}, a')     R_t^(n) = r_t + γ r_{t+1} + … + γ^{n−1} r_{t+n−1}
  L(θ)     = Ê[ℓ(Q_θ(s, a) − y)],   ℓ = Huber or squared error;     y is held fixed (no gradient through it)
  θ⁻       ← τ θ + (1 − τ) θ⁻  every C gradient steps               τ = 1: the paper's hard copy

Why the pieces: the buffer breaks the correlation of consecutive samples and reuses each one many times (which
an on-policy method cannot: its gradient needs samples of the current policy); the slowly-moving target network
θ⁻ keeps y from chasing Q_θ after every step; Double DQN removes the upward bias of max over noisy estimates.
SARSA would bootstrap from the action actually taken next, r + γ Q(s', a'); Q-learning's max learns the greedy
policy whatever the behaviour policy is, which is what makes replay of old ε-greedy data valid. y_n gives a little
of that up: its rewards after r_t follow an older ε-greedy policy, not the greedy one, a bias it leaves uncorrected
(as Rainbow does, for small n); in exchange a reward travels n steps back per copy of θ⁻ instead of one.

Exploration: with probability ε a uniform random action, else argmax_a Q_θ(s, a), so the greedy action has
probability 1 − ε + ε/|A|; ε decays linearly. A time-limit truncation is not a terminal state: its transition
keeps the true last observation as s' and bootstraps. Defaults: tuned for CartPole-v1 (seeds 11-20, n on 11-30),
50k steps.

Usage: python dqn.py --env-id CartPole-v1
       python dqn.py --env-id Acrobot-v1
       python dqn.py --n-step 1 --double             # the one-step target, with Double DQN
       python dqn.py --eval-model runs/<run>/dqn.pt
"""

import collections
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
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    learning_rate: float = 2.3e-3  # Adam step size at step 0, typically 1e-4-3e-3 (RL-Zoo's CartPole value)
    anneal_lr: bool = True  # decay the step size linearly to 0 at total_timesteps (on: chosen on seeds 11-20)
    buffer_size: int = 100_000  # replay buffer capacity in transitions; once full, the oldest are overwritten
    learning_starts: int = 1_000  # environment steps of uniform random actions before the first gradient step
    batch_size: int = 128  # B: transitions per minibatch, typically 32-256 (128: chosen on seeds 11-20)
    gamma: float = 0.99  # γ: discount factor, typically 0.95-0.999
    n_step: int = 6  # n of y_n, typically 1-10; 1 is the paper's one-step target (6: 20/20 on seeds 11-30, 1: 15/20)
    train_freq: int = 256  # environment steps (summed over the N envs) between training phases
    gradient_steps: int = 64  # G: gradient steps in each training phase (64 per 256 env steps: chosen on seeds 11-20)
    target_update_interval: int = 64  # C: update θ⁻ every C gradient steps (64, once per phase; 16-32 let Q run away)
    tau: float = 1.0  # τ: target update θ⁻ ← τθ + (1 − τ)θ⁻; 1 = hard copy, ~0.005 with C = 1 for Polyak averaging
    double: bool = False  # Double DQN: the online net picks a', θ⁻ evaluates it (off: it learned slower on seeds 11-20)
    loss: Literal["huber", "mse"] = "huber"  # ℓ: Huber (smooth L1, the paper's error clipping) or squared TD error
    max_grad_norm: float = 10.0  # clip the global gradient norm to this
    start_e: float = 1.0  # ε at step 0 of the linear decay (actions are uniform random until learning_starts)
    end_e: float = 0.04  # ε after the decay, typically 0.01-0.1
    exploration_fraction: float = 0.16  # fraction of total_timesteps over which ε decays linearly to end_e
    hidden: int = 128  # width of the Q-network's two hidden layers (128: chosen on seeds 11-20)

    # The run
    env_id: str = "CartPole-v1"  # gymnasium environment id
    total_timesteps: int = 50_000  # environment steps to train for
    num_envs: int = 1  # N: parallel environments, each stepped once per iteration
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


# ── The Q-learning target and loss, the target network, ε-greedy exploration ──
def td_target(rewards, terminations, next_q_target, gamma, next_q_online=None):
    """y for a batch, from next_q_target = Q_θ⁻(s', ·) and (Double DQN only) next_q_online = Q_θ(s', ·), both
    (B, |A|). Give it values computed without gradient: y is a fixed regression target, not something to move.
    For m-step transitions, rewards holds R_t^(m), s' is s_{t+m} and gamma is each row's γ^m."""
    if next_q_online is None:
        # y = r + γ (1 − term) max_a' Q_θ⁻(s', a')
        next_values = next_q_target.max(1).values
    else:
        # y = r + γ (1 − term) Q_θ⁻(s', argmax_a' Q_θ(s', a')): the online net picks a', θ⁻ evaluates it. Picking
        # and evaluating a' with the same noisy estimate is what biases max upward; two networks decouple them.
        next_values = next_q_target.gather(1, next_q_online.argmax(1, keepdim=True)).squeeze(1)
    return rewards + gamma * (1.0 - terminations) * next_values


def td_loss(q_taken, td_target, kind: str):
    """L(θ) = Ê[ℓ(Q_θ(s, a) − y)] with ℓ(δ) = δ²/2 for |δ| ≤ 1 and |δ| − 1/2 beyond (Huber: its gradient is the
    TD error clipped to [−1, 1], the paper's "error clipping"), or ℓ(δ) = δ² (mse)."""
    return F.smooth_l1_loss(q_taken, td_target) if kind == "huber" else F.mse_loss(q_taken, td_target)


def n_step_return(rewards, gamma: float) -> float:
    """R_t^(m) = r_t + γ r_{t+1} + … + γ^{m−1} r_{t+m−1} of m consecutive rewards, computed backwards (R ← r + γR)."""
    R = 0.0
    for r in reversed(rewards):
        R = r + gamma * R
    return R


# The target network θ⁻ follows θ: a hard copy every C gradient steps (τ = 1), or Polyak averaging (small τ).
@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """Target parameters θ⁻ ← τ θ + (1 − τ) θ⁻, each one (the notes' ρ = 1 − τ); τ = 1 is a hard copy."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def linear_schedule(start: float, end: float, duration: float, t: int) -> float:
    """ε_t: linear from `start` at t = 0 to `end` at t = duration, constant after."""
    return end + (start - end) * max(1.0 - t / duration, 0.0)


def epsilon_greedy(greedy_action, obs: np.ndarray, epsilon: float, n_actions: int) -> np.ndarray:
    """Per env, a uniform random action with probability ε (the greedy one included), else greedy_action(obs):
    π(greedy|s) = 1 − ε + ε/|A| and π(a|s) = ε/|A| for every other a. Q is evaluated only if some env is
    greedy."""
    explore = np.random.random(len(obs)) < epsilon
    actions = np.random.randint(n_actions, size=len(obs))
    if not explore.all():
        actions = np.where(explore, actions, greedy_action(obs))
    return actions


# ── The Q-network and the replay buffer ──
class QNetwork(nn.Sequential):
    """Q_θ(s, ·): an MLP from the observation to one value per action; a linear output, as values are unbounded."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_actions))  # fmt: skip

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Greedy action argmax_a Q_θ(s, a) for each row of raw_obs."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self[0].weight.device)
        return self(obs).argmax(-1).cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> QNetwork:
    return QNetwork(obs_space.shape[0], act_space.n, args.hidden)


class ReplayBuffer:
    """Experience replay: a preallocated FIFO ring of transitions (s, a, r, s', term, γ^m), sampled uniformly; γ^m
    discounts the bootstrap of an m-step transition (γ for one step). Only `terminated` is stored: a truncated
    transition keeps its true s' and bootstraps like any other."""

    def __init__(self, capacity: int, obs_shape: tuple, act_shape: tuple, act_dtype, device: torch.device):
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((capacity, *act_shape), dtype=act_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.pos, self.size, self.device = capacity, 0, 0, device

    def add(self, obs, actions, rewards, next_obs, terminations, discounts):
        """Store transitions (arrays with a leading axis, one row each); once full, the oldest are overwritten."""
        idx = (self.pos + np.arange(len(obs))) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.terminations[idx], self.discounts[idx] = next_obs, terminations, discounts
        self.pos = (self.pos + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    def sample(self, batch_size: int):
        """A uniform minibatch (with replacement) of the filled slots, as tensors (s, a, r, s', term, γ^m)."""
        idx = np.random.randint(0, self.size, size=batch_size)
        data = (self.obs, self.actions, self.rewards, self.next_obs, self.terminations, self.discounts)
        return tuple(torch.as_tensor(x[idx], device=self.device) for x in data)


class NStepWindow:
    """Turns each env's steps into n-step transitions (s_t, a_t, R_t^(m), s_{t+m}, term, γ^m) for the buffer, with
    m = n, or fewer for the last steps of an episode: they are all emitted when it ends, so no return crosses a
    reset, and only a terminal s_{t+m} zeroes the bootstrap. n = 1 passes each step on as (s, a, r, s', term, γ)."""

    def __init__(self, n: int, num_envs: int, gamma: float):
        self.n, self.gamma, self.windows = n, gamma, [collections.deque() for _ in range(num_envs)]

    def push(self, obs, actions, rewards, next_obs, terminated, truncated) -> list:
        """Add one step of each env (next_obs: the true s_{t+1}); return the transitions it completes."""
        done = []
        for i, window in enumerate(self.windows):
            window.append((obs[i], actions[i], rewards[i]))
            while len(window) == self.n or (window and (terminated[i] or truncated[i])):
                m, R = len(window), n_step_return([r for _, _, r in window], self.gamma)
                s, a, _ = window.popleft()
                done.append((s, a, R, next_obs[i], terminated[i], self.gamma**m))
        return done


def final_observations(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """s_{t+1} of each env's transition: under SAME_STEP autoreset, envs whose episode just ended already return
    the next episode's first observation, and their true last observation is in info["final_obs"]."""
    real_next_obs = next_obs.copy()
    if "final_obs" in info:
        ended = info["_final_obs"]
        real_next_obs[ended] = np.stack(info["final_obs"][ended])
    return real_next_obs


# ── Training: act ε-greedily → store → sample → td_target → gradient step → target update → log ──
def gradient_step(q_network: QNetwork, target_network: QNetwork, optimizer, batch: tuple, args: Args):
    """One step on L(θ) for a minibatch (s, a, r, s', term, γ^m); returns the TD loss and Q_θ(s, a), detached."""
    obs, actions, rewards, next_obs, terminations, discounts = batch
    with torch.no_grad():  # y is a fixed target: no gradient flows through Q_θ⁻(s', ·), nor the online choice of a'
        next_q_target = target_network(next_obs)  # Q_θ⁻(s', ·), (B, |A|)
        next_q_online = q_network(next_obs) if args.double else None  # Double DQN: Q_θ(s', ·) picks a'
    q_taken = q_network(obs).gather(1, actions.unsqueeze(1)).squeeze(1)  # Q_θ(s, a), (B,)
    loss = td_loss(q_taken, td_target(rewards, terminations, next_q_target, discounts, next_q_online), args.loss)
    check_finite(td_loss=loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], args.max_grad_norm, foreach=True)
    optimizer.step()
    return loss.detach(), q_taken.detach()


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    q_network = make_agent(args, obs_space, act_space).to(device)
    target_network = copy.deepcopy(q_network)  # θ⁻ = θ at the start
    # fused=True: one kernel for all parameters, several times faster steps than the default on CPU
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_space.shape, (), np.int64, device)
    window = NStepWindow(args.n_step, args.num_envs, args.gamma)
    N, decay_steps, num_updates = args.num_envs, args.exploration_fraction * args.total_timesteps, 0
    iterations = num_iterations(args, N)
    obs, _ = envs.reset(seed=args.seed)
    with Run(args, q_network) as run:
        for _ in range(iterations):
            run.step += N  # counts this iteration's steps: ε, the training phases and the logs go by it

            # ---- act ε-greedily in the N envs, store n-step transitions (s, a, R, s', term, γ^m) ----
            # until learning starts, a uniform random policy fills the buffer (the paper's "replay start")
            epsilon = linear_schedule(args.start_e, args.end_e, decay_steps, run.step)
            epsilon = 1.0 if run.step < args.learning_starts else epsilon
            actions = epsilon_greedy(q_network.act, obs, epsilon, act_space.n)
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            run.log_episodes(info)
            # s' is the true last observation where an episode ended (not the next episode's first), and only
            # `terminated` zeroes the bootstrap: a time-limit truncation keeps γ^m max Q(s') in its target.
            transitions = window.push(obs, actions, rewards, final_observations(next_obs, info), terminated, truncated)
            if transitions:
                rb.add(*(np.array(x) for x in zip(*transitions)))
            obs = next_obs
            if run.step % args.train_freq:  # a training phase every train_freq env steps, once learning starts
                continue
            run.progress()
            if run.step < args.learning_starts:
                continue

            # ---- a training phase: G gradient steps, on G uniform minibatches of the buffer ----
            if args.anneal_lr:  # lr (1 − t/T): the noise of late steps would hide the small gaps between Q(s, ·)
                optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - run.step / args.total_timesteps)
            losses, q_values = [], []
            # one sample of G·B transitions split into G minibatches: G samples cost ~7% more time per phase
            for batch in zip(*(x.split(args.batch_size) for x in rb.sample(args.batch_size * args.gradient_steps))):
                loss, q_taken = gradient_step(q_network, target_network, optimizer, batch, args)
                losses.append(loss)
                q_values.append(q_taken)
                num_updates += 1
                if num_updates % args.target_update_interval == 0:  # θ⁻ ← τθ + (1 − τ)θ⁻ every C gradient steps
                    polyak_update(target_network, q_network, args.tau)

            # ---- log ----
            run.log({"losses/td_loss": torch.stack(losses).mean(), "diagnostics/q_values": torch.cat(q_values).mean(),
                     "diagnostics/epsilon": epsilon, "diagnostics/buffer_fill": rb.size / rb.capacity})  # fmt: skip
        envs.close()
        return run.finish()


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, what cannot work."""
    check(
        check_spaces(args.env_id, obs_space, act_space, gym.spaces.Discrete),
        (min(args.num_envs, args.batch_size, args.gradient_steps, args.target_update_interval, args.hidden,
             args.n_step) >= 1,
         "--num-envs, --batch-size, --gradient-steps, --target-update-interval, --hidden and --n-step must be >= 1"),
    )  # fmt: skip
    check(  # after the sizes, which these divide by
        (args.train_freq >= 1 and args.train_freq % args.num_envs == 0,
         f"--train-freq {args.train_freq} must be a positive multiple of --num-envs {args.num_envs}"),
        (args.num_envs <= args.total_timesteps, f"--total-timesteps {args.total_timesteps} is less than one step "
                                                f"of the --num-envs {args.num_envs} envs"),
        (0 <= args.learning_starts <= args.total_timesteps, f"--learning-starts {args.learning_starts} must lie in "
                                                            f"[0, --total-timesteps {args.total_timesteps}]"),
        (max(args.batch_size, args.num_envs) <= args.buffer_size,
         f"--buffer-size {args.buffer_size} must hold at least --batch-size and --num-envs transitions"),
        (0 <= args.gamma <= 1 and 0 < args.tau <= 1, "--gamma must lie in [0, 1] and --tau in (0, 1]"),
        (0 <= args.end_e <= args.start_e <= 1, "need 0 <= --end-e <= --start-e <= 1"),
        (0 < args.exploration_fraction <= 1, "--exploration-fraction must lie in (0, 1]"),
        (0 < args.learning_rate < math.inf and 0 < args.max_grad_norm < math.inf,
         "--learning-rate and --max-grad-norm must be positive and finite"),
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
