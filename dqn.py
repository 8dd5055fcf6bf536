"""DQN: deep Q-learning with experience replay and a target network, for Discrete
action spaces.

Deep Q-Network (Mnih et al. 2015, Nature 518:529), with n-step targets (Sutton & Barto
2018, ch. 7; Hessel et al. 2018, arXiv:1710.02298; n = 6 by default, 1 is the paper's)
and Double DQN as an option (van Hasselt et al. 2016, arXiv:1509.06461). Off-policy:
ε-greedy actions fill a replay buffer of transitions (s, a, r, s', term), and the
Q-network is fitted to bootstrapped targets on uniform minibatches of it ("mini-batch
Q-learning"):

  y        = r + γ (1 − term) max_a' Q_θ⁻(s', a')          a terminal s' has value 0
  y_double = r + γ (1 − term) Q_θ⁻(s', argmax_a' Q_θ(s', a'))   θ picks a', θ⁻ rates it
  y_n      = R_t^(n) + γ^n (1 − term) max_a' Q_θ⁻(s_{t+n}, a')
  R_t^(n)  = r_t + γ r_{t+1} + … + γ^{n−1} r_{t+n−1}
  L(θ)     = Ê[ℓ(Q_θ(s, a) − y)]    ℓ: Huber or squared error; y is held fixed
  θ⁻       ← τ θ + (1 − τ) θ⁻ every C gradient steps      τ = 1: the paper's hard copy

Why the pieces: the buffer breaks the correlation of consecutive samples and reuses
each one many times (which an on-policy method cannot: its gradient needs samples of
the current policy); the slowly-moving target network θ⁻ keeps y from chasing Q_θ after
every step; Double DQN removes the upward bias of max over noisy estimates. SARSA would
bootstrap from the action actually taken next, r + γ Q(s', a'); Q-learning's max learns
the greedy policy whatever the behaviour policy is, which is what makes replay of old
ε-greedy data valid. y_n gives a little of that up: its rewards after r_t follow an
older ε-greedy policy, not the greedy one, a bias it leaves uncorrected (as Rainbow
does, for small n); in exchange a reward travels n steps back per copy of θ⁻, not one.

Exploration: with probability ε a uniform random action, else argmax_a Q_θ(s, a), so
the greedy action has probability 1 − ε + ε/|A|; ε decays linearly. A time-limit
truncation is not a terminal state: its transition keeps the true last observation as
s' and bootstraps. Defaults: tuned for CartPole-v1 (seeds 11-20, n on 11-30), 50k steps.

Usage: python dqn.py --env-id CartPole-v1
       python dqn.py --env-id Acrobot-v1
       python dqn.py --n-step 1 --double             # the one-step target, Double DQN
       python dqn.py --eval-model runs/<run>/dqn.pt
"""

import collections
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
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    learning_rate: float = 2.3e-3
    """Adam step size at step 0; typically 1e-4-3e-3 (RL-Zoo's CartPole value)"""
    anneal_lr: bool = True
    """decay the step size linearly to 0 at total_timesteps (chosen on seeds 11-20)"""
    buffer_size: int = 100_000
    """replay buffer capacity in transitions; once full, the oldest are overwritten"""
    learning_starts: int = 1_000
    """environment steps of uniform random actions before the first gradient step"""
    batch_size: int = 128
    """B: transitions per minibatch; typically 32-256 (128: chosen on seeds 11-20)"""
    gamma: float = 0.99
    """γ: discount factor; typically 0.95-0.999"""
    n_step: int = 6
    """n of y_n; typically 1-10, 1 is the paper's (6: 20/20 on seeds 11-30, 1: 15/20)"""
    train_freq: int = 256
    """environment steps (summed over the N envs) between training phases"""
    gradient_steps: int = 64
    """G: gradient steps per training phase (64 per 256 steps: chosen on seeds 11-20)"""
    target_update_interval: int = 64
    """C: update θ⁻ every C gradient steps (64: once per phase; 16-32 let Q run away)"""
    tau: float = 1.0
    """τ: θ⁻ ← τθ + (1 − τ)θ⁻; 1: a hard copy; ~0.005 with C = 1: Polyak averaging"""
    double: bool = False
    """Double DQN: θ picks a', θ⁻ rates it (off: it learned slower on seeds 11-20)"""
    loss: Literal["huber", "mse"] = "huber"
    """ℓ: Huber (smooth L1, the paper's error clipping) or squared TD error"""
    max_grad_norm: float = 10.0
    """clip the global gradient norm to this; typically 0.5-10"""
    start_e: float = 1.0
    """ε at step 0 of the decay (actions are uniform random until learning_starts)"""
    end_e: float = 0.04
    """ε after the decay; typically 0.01-0.1"""
    exploration_fraction: float = 0.16
    """fraction of total_timesteps over which ε decays linearly; typically 0.1-0.5"""
    hidden: int = 128
    """width of the Q-network's two hidden layers (128: chosen on seeds 11-20)"""

    # The run
    env_id: str = "CartPole-v1"
    """gymnasium environment id"""
    total_timesteps: int = 50_000
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
    """torch CPU threads (1 is fastest for small networks on CPU); 0: torch's default"""
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
    """Refuse, in one line, what cannot work."""
    env = args.env_id
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations (an MLP's input); {env} has {obs_space}")
    discrete = isinstance(act_space, gym.spaces.Discrete)
    check(discrete, f"needs a Discrete action space; {env} has {act_space}")
    check(args.num_envs >= 1, f"--num-envs {args.num_envs} must be >= 1")
    check(args.batch_size >= 1, f"--batch-size {args.batch_size} must be >= 1")
    steps = args.gradient_steps
    check(steps >= 1, f"--gradient-steps {steps} must be >= 1")
    interval = args.target_update_interval
    check(interval >= 1, f"--target-update-interval {interval} must be >= 1")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    check(args.n_step >= 1, f"--n-step {args.n_step} must be >= 1")
    # after --num-envs >= 1, which this divides by
    freq = args.train_freq >= 1 and args.train_freq % args.num_envs == 0
    check(
        freq,
        f"--train-freq {args.train_freq} must be a positive multiple of "
        f"--num-envs {args.num_envs}",
    )
    total = args.total_timesteps
    starts = args.learning_starts
    check(
        0 <= starts <= total,
        f"--learning-starts {starts} must lie in [0, --total-timesteps {total}]",
    )
    capacity = args.buffer_size
    check(
        args.batch_size <= capacity,
        f"--buffer-size {capacity} must hold at least --batch-size {args.batch_size}",
    )
    check(
        args.num_envs <= capacity,
        f"--buffer-size {capacity} must hold at least --num-envs {args.num_envs}",
    )
    check(0 <= args.gamma <= 1, f"--gamma {args.gamma} must lie in [0, 1]")
    check(0 < args.tau <= 1, f"--tau {args.tau} must lie in (0, 1]")
    check(0 <= args.start_e <= 1, f"--start-e {args.start_e} must lie in [0, 1]")
    end_e_ok = 0 <= args.end_e <= args.start_e
    check(end_e_ok, f"--end-e {args.end_e} must lie in [0, --start-e {args.start_e}]")
    fraction = args.exploration_fraction
    check(0 < fraction <= 1, f"--exploration-fraction {fraction} must lie in (0, 1]")
    lr = args.learning_rate
    check(math.isfinite(lr) and lr > 0, f"--learning-rate {lr} must be > 0 and finite")
    clip = args.max_grad_norm
    clip_ok = math.isfinite(clip) and clip > 0
    check(clip_ok, f"--max-grad-norm {clip} must be > 0 and finite")


# ── The Q-learning target and loss, the target network, ε-greedy exploration ──
def td_target(rewards, terminations, next_q_target, gamma, next_q_online=None):
    """y for a batch, from next_q_target = Q_θ⁻(s', ·) and (Double DQN only)
    next_q_online = Q_θ(s', ·), both (B, |A|). Give it values computed without gradient:
    y is a fixed regression target, not something to move. For m-step transitions,
    rewards holds R_t^(m), s' is s_{t+m} and gamma is each row's γ^m."""
    if next_q_online is None:
        # y = r + γ (1 − term) max_a' Q_θ⁻(s', a')
        next_values = next_q_target.max(1).values
    else:
        # y = r + γ (1 − term) Q_θ⁻(s', argmax_a' Q_θ(s', a')): the online net picks
        # a', θ⁻ evaluates it. Picking and evaluating a' with the same noisy estimate is
        # what biases max upward; two networks decouple them.
        next_actions = next_q_online.argmax(1, keepdim=True)
        next_values = next_q_target.gather(1, next_actions).squeeze(1)
    return rewards + gamma * (1.0 - terminations) * next_values


def td_loss(q_taken, td_target, kind: str):
    """L(θ) = Ê[ℓ(Q_θ(s, a) − y)] with ℓ(δ) = δ²/2 for |δ| ≤ 1 and |δ| − 1/2 beyond
    (Huber: its gradient is the TD error clipped to [−1, 1], the paper's "error
    clipping"), or ℓ(δ) = δ² (mse)."""
    if kind == "huber":
        return F.smooth_l1_loss(q_taken, td_target)
    return F.mse_loss(q_taken, td_target)


def n_step_return(rewards, gamma: float) -> float:
    """R_t^(m) = r_t + γ r_{t+1} + … + γ^{m−1} r_{t+m−1} of m consecutive rewards,
    computed backwards (R ← r + γR)."""
    R = 0.0
    for r in reversed(rewards):
        R = r + gamma * R
    return R


# The target network θ⁻ follows θ: a hard copy every C gradient steps (τ = 1), or Polyak
# averaging (small τ).
@torch.no_grad()  # θ⁻ moves toward θ outside autograd: no gradient step
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """θ⁻ ← τ θ + (1 − τ) θ⁻ for every target parameter (ρ = 1 − τ in Igel's Deep RL
    deck, "Delayed Q update")."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def linear_schedule(start: float, end: float, duration: float, t: int) -> float:
    """ε_t: linear from `start` at t = 0 to `end` at t = duration, constant after."""
    return end + (start - end) * max(1.0 - t / duration, 0.0)


def epsilon_greedy(greedy_action, obs: np.ndarray, epsilon: float, n_actions: int):
    """Per env, a uniform random action with probability ε (the greedy one included),
    else greedy_action(obs): π(greedy|s) = 1 − ε + ε/|A| and π(a|s) = ε/|A| for every
    other a. Q is evaluated only if some env is greedy."""
    explore = np.random.random(len(obs)) < epsilon
    actions = np.random.randint(n_actions, size=len(obs))
    if not explore.all():
        actions = np.where(explore, actions, greedy_action(obs))
    return actions


# ── The Q-network, the replay buffer, the envs ──
class QNetwork(nn.Sequential):
    """Q_θ(s, ·): an MLP from the observation to one value per action; a linear output,
    as values are unbounded."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_actions),
        )

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Greedy action argmax_a Q_θ(s, a) for each row of raw_obs."""
        device = self[0].weight.device
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
        return self(obs).argmax(-1).cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> QNetwork:
    return QNetwork(obs_space.shape[0], act_space.n, args.hidden)


class ReplayBuffer:
    """Experience replay: a preallocated FIFO ring of transitions
    (s, a, r, s', term, γ^m), sampled uniformly; obs and next_obs are
    (capacity, *obs_shape), actions (capacity, *act_shape), rewards, terminations and
    discounts (capacity,). γ^m discounts the bootstrap of an m-step transition (γ for
    one step). Only `terminated` is stored: a truncated transition keeps its true s'
    and bootstraps like any other."""

    def __init__(self, capacity: int, obs_shape, act_shape, act_dtype, device):
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((capacity, *act_shape), dtype=act_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.device = device
        # the next slot to write, and how many slots hold a transition
        self.pos = 0
        self.size = 0

    def add(self, obs, actions, rewards, next_obs, terminations, discounts):
        """Store one transition per row (arrays with a leading axis); once the buffer is
        full, the oldest are overwritten."""
        n = len(obs)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_obs[idx] = next_obs
        self.terminations[idx] = terminations
        self.discounts[idx] = discounts
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int):
        """A uniform minibatch (with replacement) of the filled slots, as tensors
        (s, a, r, s', term, γ^m)."""
        idx = np.random.randint(0, self.size, size=batch_size)
        data = (self.obs, self.actions, self.rewards, self.next_obs, self.terminations)
        data += (self.discounts,)
        return tuple(torch.as_tensor(x[idx], device=self.device) for x in data)


class NStepWindow:
    """Turns each env's steps into n-step transitions (s_t, a_t, R_t^(m), s_{t+m}, term,
    γ^m) for the buffer, with m = n, or fewer for the last steps of an episode: they are
    all emitted when it ends, so no return crosses a reset, and only a terminal s_{t+m}
    zeroes the bootstrap. n = 1 passes each step on as (s, a, r, s', term, γ)."""

    def __init__(self, n: int, num_envs: int, gamma: float):
        self.n = n
        self.gamma = gamma
        self.windows = [collections.deque() for _ in range(num_envs)]

    def push(self, obs, actions, rewards, next_obs, terminated, truncated) -> list:
        """Add one step of each env (next_obs: the true s_{t+1}); return the transitions
        it completes."""
        done = []
        for i, window in enumerate(self.windows):
            window.append((obs[i], actions[i], rewards[i]))
            ended = terminated[i] or truncated[i]
            while len(window) == self.n or (window and ended):
                m = len(window)
                # R_t^(m) of the m rewards in the window
                R = n_step_return([r for _, _, r in window], self.gamma)
                s, a, _ = window.popleft()
                done.append((s, a, R, next_obs[i], terminated[i], self.gamma**m))
        return done


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


# ── Training: act ε-greedily → store → sample → td_target → step → θ⁻ → log ──
def gradient_step(qf, qf_target, optimizer, batch: tuple, args: Args):
    """One step on L(θ) for a minibatch (s, a, r, s', term, γ^m); returns the TD loss
    and Q_θ(s, a), detached."""
    obs, actions, rewards, next_obs, terminations, discounts = batch
    # y is a fixed target: no gradient flows through Q_θ⁻(s', ·), nor through the online
    # choice of a'
    with torch.no_grad():
        # Q_θ⁻(s', ·), (B, |A|)
        next_q_target = qf_target(next_obs)
        # Double DQN only: Q_θ(s', ·), (B, |A|), picks a'
        next_q_online = None
        if args.double:
            next_q_online = qf(next_obs)
    # y = R_t^(m) + γ^m (1 − term) max_a' Q_θ⁻(s_{t+m}, a')  (or y_double), (B,)
    y = td_target(rewards, terminations, next_q_target, discounts, next_q_online)
    # Q_θ(s, a), (B,)
    q_taken = qf(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
    # L(θ) = Ê[ℓ(Q_θ(s, a) − y)]
    loss = td_loss(q_taken, y, args.loss)
    check_finite(td_loss=loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = optimizer.param_groups[0]["params"]
    nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
    optimizer.step()
    return loss.detach(), q_taken.detach()


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    qf = make_agent(args, obs_space, act_space).to(device)
    # θ⁻ = θ at the start
    qf_target = copy.deepcopy(qf)
    # fused=True: one kernel for all parameters, several times faster steps than the
    # default on CPU
    optimizer = torch.optim.Adam(qf.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_space.shape, (), np.int64, device)
    window = NStepWindow(args.n_step, args.num_envs, args.gamma)
    N = args.num_envs
    decay_steps = args.exploration_fraction * args.total_timesteps
    num_updates = 0
    iterations = math.ceil(args.total_timesteps / N)
    log_pending = False
    obs, _ = envs.reset(seed=args.seed)
    with Run(args, qf) as run:
        for iteration in range(iterations):
            # this iteration's N steps: ε, the training phases and the logs go by it
            run.step += N
            # a log is due every --log-every steps (and a Ctrl-C stops the run here);
            # it waits for the next training phase, whose losses it shows
            if run.due():
                log_pending = True

            # ---- act ε-greedily in the N envs, store n-step transitions ----
            # ε_t decays linearly; until learning starts, a uniform random policy fills
            # the buffer (the paper's "replay start")
            epsilon = linear_schedule(args.start_e, args.end_e, decay_steps, run.step)
            if run.step < args.learning_starts:
                epsilon = 1.0
            actions = epsilon_greedy(qf.act, obs, epsilon, act_space.n)
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            run.log_episodes(info)
            # s' is the true last observation where an episode ended (not the next
            # episode's first), and only `terminated` zeroes the bootstrap: a time-limit
            # truncation keeps γ^m max_a' Q_θ⁻(s', a') in its target.
            real_next_obs = final_observations(next_obs, info)
            transitions = window.push(
                obs, actions, rewards, real_next_obs, terminated, truncated
            )
            if transitions:
                rb.add(*(np.array(x) for x in zip(*transitions)))
            obs = next_obs
            # a training phase every train_freq env steps, once learning starts
            if run.step % args.train_freq:
                continue
            run.progress()
            if run.step < args.learning_starts:
                continue

            # ---- a training phase: G gradient steps, on G uniform minibatches ----
            if args.anneal_lr:
                # lr (1 − t/T): the noise of late steps would hide the small gaps
                # between Q(s, ·); 0 past T (the last iteration may overshoot it)
                frac_left = max(1.0 - run.step / args.total_timesteps, 0.0)
                optimizer.param_groups[0]["lr"] = args.learning_rate * frac_left
            losses = []
            q_values = []
            # one sample of G·B transitions split into G minibatches: G samples cost
            # ~7% more time per phase
            sample = rb.sample(args.batch_size * args.gradient_steps)
            minibatches = zip(*(x.split(args.batch_size) for x in sample))
            for batch in minibatches:
                loss, q_taken = gradient_step(qf, qf_target, optimizer, batch, args)
                losses.append(loss)
                q_values.append(q_taken)
                num_updates += 1
                # θ⁻ ← τθ + (1 − τ)θ⁻ every C gradient steps
                if num_updates % args.target_update_interval == 0:
                    polyak_update(qf_target, qf, args.tau)

            # ---- log (the losses' .item()s cost a sync: once per --log-every) ----
            if log_pending:
                scalars = {
                    "losses/td_loss": torch.stack(losses).mean(),
                    "diagnostics/q_values": torch.cat(q_values).mean(),
                    "diagnostics/epsilon": epsilon,
                    "diagnostics/buffer_fill": rb.size / rb.capacity,
                }
                run.log(scalars)
                log_pending = False
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
