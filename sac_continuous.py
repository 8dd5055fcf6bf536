"""Soft Actor-Critic with twin Q critics and automatic entropy tuning, for bounded Box
action spaces.

SAC (Haarnoja et al. 2018, arXiv:1801.01290; the twin-Q form without a V network of
arXiv:1812.05905) is off-policy: its critic target needs only (s, a, r, s', term) and a
fresh action of the current policy, never the probability of the stored a, so a replay
buffer keeps transitions of any earlier policy. It maximises the entropy-regularised
return E[Σ_t γ^t (r_t + α H(π(·|s_t)))]:

  y    = r + γ (1 − term) (min_j Q_θ⁻_j(s', ã') − α log π(ã'|s')),   ã' ~ π(·|s') fresh
  L_Q  = Σ_j Ê[(Q_j(s, a) − y)²]       (two critics: the min in y curbs overestimation)
  L_π  = Ê[α log π(ã|s) − min_j Q_j(s, ã)],   ã = tanh(μ_θ(s) + σ_θ(s) ⊙ ξ), ξ ~ N(0, I)
  log π(a|s) = log N(u; μ, σ²) − Σ_i log(1 − tanh²(u_i)),   a = tanh(u)
  J(α) = Ê[−α (log π(ã|s) + H̄)],   H̄ = −|A|   (α grows while the entropy is below H̄)
  θ⁻   ← τ θ + (1 − τ) θ⁻                    (Polyak-averaged target critics)

In y, −α log π(ã'|s') is a bonus: its mean over ã' is +α H(π(·|s')). The actor (and α)
take d = --policy-frequency steps every d-th step (delayed, as in TD3). The policy
lives in (−1, 1)^|A|; actions are rescaled to the env's bounds when stepped. Defaults:
CleanRL's MuJoCo settings (batch 256, 256×256 nets, buffer 1e6, 5k random steps, lr
3e-4 actor / 1e-3 critics), with SB3's clamp of log σ to [−20, 2].

Usage: python sac_continuous.py --env-id Hopper-v5
       python sac_continuous.py --env-id HalfCheetah-v5 --seed 3
       python sac_continuous.py --eval-model runs/<run>/sac_continuous.pt
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
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (FIFO); typically 1e5-1e6"""
    learning_starts: int = 5_000
    """env steps of uniformly random actions, with no updates; typically 1e3-1e4"""
    batch_size: int = 256
    """transitions per gradient step, uniform from the buffer; typically 64-256"""
    gamma: float = 0.99
    """γ: discount factor; typically 0.98-0.999"""
    tau: float = 0.005
    """τ: target critics' Polyak rate, θ⁻ ← τθ + (1 − τ)θ⁻; typically 0.005-0.02"""
    policy_lr: float = 3e-4
    """Adam step size of the actor; typically 1e-4 to 1e-3"""
    q_lr: float = 1e-3
    """Adam step size of the critics and of log α; typically 3e-4 to 1e-3"""
    policy_frequency: int = 2
    """d: every d-th step, d actor (and α) steps (delayed updates); typically 1-2"""
    autotune: bool = True
    """α: tune it toward the target entropy H̄ = −|A|, from α = 1; off: fixed --alpha"""
    alpha: float = 0.2
    """α: entropy temperature with --no-autotune; typically 0.05-0.2"""
    hidden: int = 256
    """width of the 2 hidden layers of the actor and of each critic; typically 64-256"""

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
    """Refuse, in one line, what cannot work."""
    env = args.env_id
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations (an MLP's input); {env} has {obs_space}")
    box = isinstance(act_space, gym.spaces.Box)
    check(box, f"needs a Box action space; {env} has {act_space}")
    bounded = np.isfinite(np.r_[act_space.low, act_space.high]).all()
    check(bounded, f"needs a bounded Box action space; {env} has {act_space}")
    N = args.num_envs
    d = args.policy_frequency
    batch = args.batch_size
    buffer = args.buffer_size
    ls = args.learning_starts
    steps = args.total_timesteps
    check(N >= 1, f"--num-envs {N} must be >= 1")
    check(batch >= 1, f"--batch-size {batch} must be >= 1")
    check(d >= 1, f"--policy-frequency {d} must be >= 1")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    check(ls >= 0, f"--learning-starts {ls} must be >= 0")
    check(ls < steps, f"--learning-starts {ls} must be < --total-timesteps {steps}")
    check(buffer >= batch, f"--buffer-size {buffer} must be >= --batch-size {batch}")
    check(buffer >= N, f"--buffer-size {buffer} must be >= --num-envs {N}")
    check(0 <= args.gamma <= 1, f"--gamma {args.gamma} must lie in [0, 1]")
    check(0 < args.tau <= 1, f"--tau {args.tau} must lie in (0, 1]")
    rates = {"--policy-lr": args.policy_lr, "--q-lr": args.q_lr}
    if not args.autotune:  # --alpha is the temperature only with --no-autotune
        rates["--alpha"] = args.alpha
    for flag, value in rates.items():
        ok = math.isfinite(value) and value > 0
        check(ok, f"{flag} {value} must be finite and > 0")


# ── The target, the log-probability and the losses, in the lecture's order
def td_target(rewards, terminations, next_q1, next_q2, next_logp, alpha, gamma: float):
    """The soft target y for a batch, from the target critics at (s', ã') and
    log π(ã'|s'), ã' ~ π(·|s') sampled fresh (not the stored action): a fixed regression
    target, no gradient. A terminal s' has value 0; a time-limit truncation was stored
    with term = 0 and its true s', so it bootstraps."""
    # min_j Q_θ⁻_j(s', ã') − α log π(ã'|s'): minus α log π, i.e. plus α times an
    # estimate of the entropy H(π(·|s')) = −E[log π], the bonus that the
    # entropy-regularised return adds at s'
    soft_value = torch.min(next_q1, next_q2) - alpha * next_logp
    # y = r + γ (1 − term) (min_j Q_θ⁻_j(s', ã') − α log π(ã'|s'))
    return rewards + gamma * (1.0 - terminations) * soft_value


def critic_loss(q1, q2, td_target):
    """L_Q = Σ_j Ê[(Q_j(s, a) − y)²]: both critics regress onto the same y (held
    fixed)."""
    return ((q1 - td_target) ** 2).mean() + ((q2 - td_target) ** 2).mean()


def tanh_gaussian_logp(xi, log_std, u):
    """log π(a|s) of a = tanh(u), u = μ + σ ⊙ ξ ~ N(μ, σ²), by the change of variables:
    log N(u; μ, σ²) − Σ_i log(1 − tanh²(u_i)). 1 − tanh²(u) rounds to 0 for |u| ≳ 9 in
    float32 (its log → −inf), so use the identity log(1 − tanh²(u)) = 2 (log 2 − u −
    softplus(−2u)), which is exact and finite for every u."""
    # log N(u; μ, σ²) = Σ_i (−ξ_i²/2 − log σ_i − log(2π)/2), since (u − μ)/σ = ξ
    log_normal = (-0.5 * xi**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    # Σ_i log(1 − tanh²(u_i)) = Σ_i 2 (log 2 − u_i − softplus(−2 u_i))
    log_squash = (2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return log_normal - log_squash


def actor_loss(q1_pi, q2_pi, logp, alpha):
    """L_π = Ê[α log π(ã|s) − min_j Q_j(s, ã)]: minimising it ascends the soft value
    E[Q − α log π]; the gradient reaches θ through ã = tanh(μ_θ + σ_θ ξ)
    (reparameterisation) and through log π."""
    # min_j Q_j(s, ã); on a tie Q_1 alone gets the gradient
    min_q = torch.stack((q1_pi, q2_pi)).min(0).values
    return (alpha * logp - min_q).mean()


def alpha_loss(log_alpha, logp, target_entropy: float):
    """J(α) = Ê[−α (log π(ã|s) + H̄)]: its gradient −Ê[log π + H̄] is positive
    (α shrinks) when the entropy −Ê[log π] exceeds the target H̄, negative (α grows)
    when it falls below. α = exp(log α) stays positive."""
    return -(log_alpha.exp() * (logp + target_entropy)).mean()


@torch.no_grad()  # θ⁻ moves toward θ outside autograd: no gradient step
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """θ⁻ ← τ θ + (1 − τ) θ⁻ for every target parameter (ρ = 1 − τ in Igel's Deep RL
    deck, "Delayed Q update")."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


# ── Networks, the environments and the replay buffer
def scale_action(a, low, high):
    """Map a ∈ [−1, 1]^|A| affinely onto the env's box [low, high]."""
    return low + (a + 1.0) * 0.5 * (high - low)


# bounds on log σ, so that σ neither collapses nor explodes: SB3's [−20, 2], a clamp
# (CleanRL's tanh squash into [−5, 2] learned slower on Hopper; the sweep is
# benchmarks/results/mujoco-1m/offpolicy-100k/sac-log-std.md)
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class Actor(nn.Module):
    """π_θ(·|s): an MLP gives μ and log σ of a diagonal Gaussian over u; the action
    a = tanh(u) ∈ (−1, 1)^|A| (rescaled to the env's bounds only when stepped, so log π
    is the density of a itself)."""

    def __init__(self, obs_dim: int, act_space: gym.spaces.Box, hidden: int):
        super().__init__()
        act_dim = act_space.shape[0]
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2 * act_dim),
        )
        low = torch.as_tensor(act_space.low, dtype=torch.float32)
        high = torch.as_tensor(act_space.high, dtype=torch.float32)
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, obs):
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        # inside the bounds log σ is the network's output as it is (its gradient is 1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs, with_logp: bool = True):
        """ã ~ π_θ(·|s) in (−1, 1)^|A| and log π_θ(ã|s) (None if not with_logp: acting
        needs no log-prob)."""
        mean, log_std = self(obs)
        # reparameterisation: u = μ + σ ⊙ ξ with ξ ~ N(0, I) drawn outside the graph, so
        # ∇_θ flows through ã
        xi = torch.randn_like(mean)
        u = mean + log_std.exp() * xi
        actions = torch.tanh(u)
        if not with_logp:
            return actions, None
        return actions, tanh_gaussian_logp(xi, log_std, u)

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic evaluation action: tanh(μ(s)), rescaled to the env's bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.low.device)
        mean, _ = self(obs)
        actions = scale_action(torch.tanh(mean), self.low, self.high)
        return actions.cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Actor:
    """The actor: what --save-model saves and evaluation runs (the critics only serve
    training)."""
    return Actor(obs_space.shape[0], act_space, args.hidden)


def stacked_linear(n_in: int, n_out: int):
    """Weights (2, n_in, n_out) and biases (2, 1, n_out) of two independent layers, each
    with nn.Linear's init."""
    pair = [nn.Linear(n_in, n_out) for _ in range(2)]
    weight = torch.stack([layer.weight.T.detach() for layer in pair])
    bias = torch.stack([layer.bias.detach() for layer in pair]).unsqueeze(1)
    return nn.Parameter(weight), nn.Parameter(bias)


class TwinQ(nn.Module):
    """The two critics Q_1(s, a) and Q_2(s, a): two independent MLPs, with a linear
    output (Q-values are unbounded). Their weights are stacked on a leading axis of size
    2, so each layer runs both critics as one batched matmul (baddbmm): measured
    1.10-1.22× faster whole SAC steps on CPU than two separate networks."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.w1, self.b1 = stacked_linear(obs_dim + act_dim, hidden)
        self.w2, self.b2 = stacked_linear(hidden, hidden)
        # the output unit: weights as rows (2, 1, hidden), biases (2, 1)
        w3, b3 = stacked_linear(hidden, 1)
        self.w3 = nn.Parameter(w3.detach().view(2, 1, hidden))
        self.b3 = nn.Parameter(b3.detach().view(2, 1))

    def forward(self, obs, actions):
        """Q_1(s, a) and Q_2(s, a) of a batch as one (2, B) tensor:
        `q1, q2 = qf(obs, actions)`."""
        # both critics see the same input, (2, B, in)
        x = torch.cat([obs, actions], dim=-1).expand(2, -1, -1)
        # relu_ in place: one pass less over a (2, B, hidden) tensor
        x = torch.baddbmm(self.b1, x, self.w1).relu_()
        x = torch.baddbmm(self.b2, x, self.w2).relu_()
        # Q_j = x_j · w_j + b_j as a product and a sum: several times faster on CPU than
        # a one-column baddbmm
        return (x * self.w3).sum(-1) + self.b3


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


# ── Training: act → store → sample → critic step → actor and α steps → θ⁻
def update_critics(actor, qf, qf_target, q_optimizer, batch, alpha, gamma: float):
    """One gradient step of L_Q for both critics on a minibatch (s, a, r, s', term).
    Returns L_Q and Q_1(s, a), Q_2(s, a), as tensors (read only when logged)."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        # ã' ~ π(·|s'), sampled fresh: not the stored action
        next_actions, next_logp = actor.sample(next_obs)
        # Q_θ⁻_1(s', ã') and Q_θ⁻_2(s', ã'): the target critics
        next_q1, next_q2 = qf_target(next_obs, next_actions)
        # y: the soft TD target, a constant in L_Q
        y = td_target(rewards, terminations, next_q1, next_q2, next_logp, alpha, gamma)
    q1, q2 = qf(obs, actions)
    # L_Q = Σ_j Ê[(Q_j(s, a) − y)²]
    qf_loss = critic_loss(q1, q2, y)
    check_finite(critic_loss=qf_loss)
    q_optimizer.zero_grad(set_to_none=True)
    qf_loss.backward()
    q_optimizer.step()
    return qf_loss, q1, q2


def update_actor_and_alpha(actor, qf, actor_optimizer, batch, alpha, log_alpha):
    """One gradient step of L_π + J(α) on the minibatch's states s, with a fresh
    ã ~ π_θ(·|s). Returns the statistics to log, as tensors (read only when logged)."""
    obs = batch[0]
    new_actions, logp = actor.sample(obs)
    # L_π moves θ only: the critics are constants in it (no gradients for their weights)
    qf.requires_grad_(False)
    q1_pi, q2_pi = qf(obs, new_actions)
    # L_π = Ê[α log π(ã|s) − min_j Q_j(s, ã)]
    pi_loss = actor_loss(q1_pi, q2_pi, logp, alpha)
    qf.requires_grad_(True)
    # H̄ = −|A|: the target entropy
    target_entropy = -float(new_actions.shape[-1])
    # J(α) = Ê[−α (log π(ã|s) + H̄)]; log π is data for J(α), not a path to θ
    a_loss = alpha_loss(log_alpha, logp.detach(), target_entropy)
    check_finite(actor_loss=pi_loss, alpha_loss=a_loss)
    actor_optimizer.zero_grad(set_to_none=True)
    # L_π and J(α) share no parameter: the sum's gradient is each loss's own gradient
    (pi_loss + a_loss).backward()
    actor_optimizer.step()
    return {
        "losses/actor_loss": pi_loss.detach(),
        "losses/alpha_loss": a_loss.detach(),
        "diagnostics/entropy": -logp.detach().mean(),
    }


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    N = args.num_envs
    act_dim = act_space.shape[0]
    actor = make_agent(args, obs_space, act_space).to(device)
    qf = TwinQ(obs_space.shape[0], act_dim, args.hidden).to(device)
    # θ⁻: slowly moving copies of the critics, that y is computed from
    qf_target = copy.deepcopy(qf).requires_grad_(False)
    # fused=True: one kernel for all parameters of a group, several times faster on CPU
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.q_lr, fused=True)
    # α is learnt as log α, so it stays positive; without --autotune it is a constant
    if args.autotune:
        log_alpha = torch.tensor(0.0, device=device, requires_grad=True)
    else:
        # math.log: a Python float, so float32 (MPS has no float64)
        log_alpha = torch.tensor(math.log(args.alpha), device=device)
    alpha = log_alpha.exp().detach()
    # one Adam with a parameter group each for θ and log α steps both, as two optimizers
    # would (log α keeps its gradient None without --autotune)
    groups = [{"params": actor.parameters()}, {"params": [log_alpha], "lr": args.q_lr}]
    actor_optimizer = torch.optim.Adam(groups, lr=args.policy_lr, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_space.shape, (act_dim,), np.float32, device)
    # one env step of the N envs per iteration, and (after --learning-starts) one
    # gradient step of the critics
    iterations = math.ceil(args.total_timesteps / N)
    obs, _ = envs.reset(seed=args.seed)
    actor_stats = {}
    with Run(args, actor) as run:
        for iteration in range(iterations):
            # ---- act: uniformly at random while the buffer fills (diverse data, no
            # updates: the first --learning-starts steps), then ã ~ π_θ(·|s) ----
            warmup = run.step + N <= args.learning_starts
            if warmup:
                actions = np.random.uniform(-1.0, 1.0, (N, act_dim)).astype(np.float32)
            else:
                with torch.no_grad():
                    s_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                    actions = actor.sample(s_t, with_logp=False)[0].cpu().numpy()
            env_actions = scale_action(actions, act_space.low, act_space.high)
            next_obs, rewards, terminations, _, info = envs.step(env_actions)
            # ---- store (s, a, r, s', term): the true s' of an ended episode; a
            # truncated one is stored with term = 0, so it bootstraps ----
            real_next_obs = final_observations(next_obs, info)
            rb.add(obs, actions, rewards, real_next_obs, terminations)
            obs = next_obs
            run.step += N
            run.log_episodes(info)
            # asked every iteration: due() is also where a Ctrl-C stops training
            log_due = run.due()
            if warmup:
                continue

            # ---- critics: one step of L_Q toward the soft target y ----
            batch = rb.sample(args.batch_size)
            qf_loss, q1, q2 = update_critics(
                actor, qf, qf_target, q_optimizer, batch, alpha, args.gamma
            )
            # ---- actor and α: every d-th step, d steps on the same minibatch ----
            if (iteration + 1) % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    actor_stats = update_actor_and_alpha(
                        actor, qf, actor_optimizer, batch, alpha, log_alpha
                    )
                    alpha = log_alpha.exp().detach()
            # ---- θ⁻ ← τ θ + (1 − τ) θ⁻ ----
            polyak_update(qf_target, qf, args.tau)

            # ---- log: read the tensors (a host sync on a GPU) only when due ----
            if log_due:
                scalars = {
                    **actor_stats,
                    "losses/qf_loss": qf_loss.detach(),
                    "diagnostics/alpha": alpha,
                    "diagnostics/q_values": torch.cat([q1, q2]).detach().mean(),
                }
                run.log(scalars)
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
