"""REINFORCE: Monte-Carlo policy gradient over batches of complete episodes, for
Discrete and Box action spaces (Williams 1992; Sutton & Barto 2018, sections 13.3-13.4).

Each update runs N episodes to their end with π_θ, uses them for one step (on-policy:
the estimate holds only for samples of the current π_θ) and ascends

  ∇J(θ) ≈ (1/N) Σ_i Σ_t ∇ log π_θ(a_t|s_t) (G_t − b(s_t)),
  G_t = Σ_{t'≥t} γ^{t'−t} r_{t'}   (the reward-to-go)

Reward-to-go: a_t cannot change the rewards before it, so leaving them out removes
noise, not signal. Baseline: E[∇ log π(a|s) b(s)] = b(s) ∇ Σ_a π(a|s) = b(s) ∇1 = 0,
so b keeps the mean and lowers the variance (without b, CartPole's +1 a step pushes up
every action taken). --baseline none | mean (b = the batch's mean G_t over all its
steps) | time-mean (b_t = the mean G_t at step t of the episodes that reach step t:
Guberina's RL notes, eq. 1.71) | value (b(s) = V_w(s), regressed on G_t: "REINFORCE
with baseline", S&B 13.4); on a fixed CartPole batch (tests) V_w cuts the gradient's
variance to 0.32×.

Discounting: the exact gradient of the discounted objective weights step t by γ^t as
well (option 2, --weight-by-gamma-t). Common practice (option 1, the default) drops γ^t:
γ only shortens the horizon of G_t. That is the gradient of no objective (Nota & Thomas
2020), but it learns better. The 3-armed softmax bandit of CSCI 1470 (Ewing, day 31,
"Policy Gradient on Multi-Arm Bandits"), θ = (1, −1, 0): the deck computes the gradient
of one pull, (a1, 3) → 3 (0.34, −0.09, −0.25); summed over its five pulls τ = (a1, 3),
(a2, −1), (a3, 2), (a1, 4), (a3, 1) as one-step episodes (γ = 0, G_t = r_t), our own
computation gives Σ_t r_t ∇ log π(a_t) = (1.013, −1.810, 0.797); tests check both.

Off-policy steps (--update-epochs K > 1; CSCI 1470, Ewing, both decks, "But what if we
actually could…"; CISC 7404, Morad, "Off-Policy Gradient"; Guberina eq. 1.42-1.62):
steps 2..K reuse the batch, now samples of π_old ≠ π_θ, importance weighted with
ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t), products in log space, ESS/N = (Σw)² / (N Σw²):
  ∇J(θ) ≈ (1/N) Σ_i Σ_t w_t ∇ log π_θ(a_t|s_t) Ψ_t,  and --importance sets w_t:
  trajectory    W = ∏_t ρ_t (eq. 1.58; Morad's ∏_t): unbiased, variance exponential in T
  per-decision  ∏_{t'≤t} ρ_{t'}, and w_{t'} on each r_{t'} in G_t (eq. 1.59): unbiased,
                fewer ratios per term (a_t changes no earlier reward)
  per-step      ρ_t alone (Ewing's ρ · Q^π; eq. 1.62 without the state ratio): biased,
                first order in θ − θ_old: the surrogate r_t(θ) Â_t of TRPO and PPO
                (Ewing day 31, "Trust Region Policy Optimization"; second deck,
                "Proximal Policy Optimization"; Morad, "Proximal Policy Optimization")
The default is per-step: with K = 4 on CartPole-v1's episodes of 400-500 steps its
median ESS/N is 0.99, the trajectory product's 0.50 and the per-decision's 0.79
(benchmarks/results/reinforce-importance).

Discrete actions: softmax policy. Box: diagonal Gaussian with state-independent log σ,
actions clipped to the bounds when stepped; Box envs train for 1M steps (BOX_DEFAULTS).

Usage: python reinforce.py --env-id CartPole-v1 --baseline none
       python reinforce.py --eval-model runs/<run>/reinforce.pt
"""

import contextlib
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
    baseline: Literal["none", "mean", "time-mean", "value"] = "value"
    """b(s_t): none, the batch's mean G_t, its mean at step t, or a learned V_w(s_t)"""
    learning_rate: float = 3e-3
    """α: Adam step size of π_θ and of V_w; typically 1e-3-1e-2"""
    anneal_lr: bool = True
    """decay α linearly to 0: noisy Monte-Carlo gradients need ever smaller steps"""
    gamma: float = 0.99
    """γ: discount factor; typically 0.95-0.999"""
    weight_by_gamma_t: bool = False
    """option 2: weight step t by γ^t as well (the exact discounted gradient)"""
    normalize_returns: bool = False
    """divide G_t − b(s_t) by its std in each batch (the scale only, not the mean)"""
    hidden: int = 64
    """width of the two hidden layers of π_θ and of V_w; typically 32-256"""
    vf_iters: int = 10
    """gradient steps of V_w on each batch's G_t (--baseline value); typically 5-80"""
    update_epochs: int = 1
    """K: steps of π_θ on each batch, 2..K importance weighted; 1 (on-policy) to 4"""
    importance: Literal["trajectory", "per-decision", "per-step"] = "per-step"
    """weights of π_old's samples when K > 1: ∏_t ρ_t, ∏_{t'≤t} ρ_{t'}, or ρ_t alone"""

    # The run
    env_id: str = "CartPole-v1"
    """gymnasium environment id"""
    total_timesteps: int = 300_000
    """environment steps to train for, rounded up to whole iterations"""
    num_envs: int = 16
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


# Used in place of the defaults above when the env's action space is Box.
BOX_DEFAULTS = dict(total_timesteps=1_000_000)


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, the settings REINFORCE cannot run with."""
    env = args.env_id
    lr = args.learning_rate
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations (an MLP's input); {env} has {obs_space}")
    known = isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box))
    check(known, f"needs a Discrete or Box action space; {env} has {act_space}")
    check(args.num_envs >= 1, f"--num-envs {args.num_envs} must be >= 1")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    check(args.vf_iters >= 1, f"--vf-iters {args.vf_iters} must be >= 1")
    epochs = args.update_epochs
    check(epochs >= 1, f"--update-epochs {epochs} must be >= 1")
    check(0 <= args.gamma <= 1, f"--gamma {args.gamma} must lie in [0, 1]")
    check(math.isfinite(lr) and lr > 0, f"--learning-rate {lr} must be > 0 and finite")


# ── The estimator and its parts, in the order the lecture derives them ──
# log π_θ(a|s) is computed in the autograd tape, so that its gradient is the score
# ∇ log π_θ(a|s).
def categorical_logp(logits, actions):
    """log π(a|s) = z_a − log Σ_b exp z_b of the softmax policy with logits z."""
    logp_all = logits.log_softmax(-1)
    return logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def gaussian_logp(mean, log_std, actions):
    """log N(a; μ, σ²), summed over the independent action dimensions."""
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def categorical_entropy(logits):
    """H[π(·|s)] = −Σ_a π(a|s) log π(a|s) of the softmax policy (a diagnostic only)."""
    logp_all = logits.log_softmax(-1)
    return -(logp_all.exp() * logp_all).sum(-1)


def gaussian_entropy(log_std):
    """H[N(μ, σ²)] = Σ_j (log σ_j + ½ log(2πe)), the same in every state (a diagnostic
    only)."""
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def policy_gradient_loss(logp, weights):
    """−(1/N) Σ_i Σ_t log π_θ(a_t|s_t) Ψ_t for logp and weights of shape (T, N), N
    episodes. This loss means nothing; its gradient is ∇J. Its value is no measure of
    the policy (it depends on the batch and on b); it exists so that autograd,
    differentiating only through log π, returns −∇J, the estimate above: minimising it
    is gradient ascent on J."""
    return -(logp * weights).sum(0).mean()


def reward_to_go(rewards, gamma: float, bootstrap=None, ratio=None):
    """The Monte-Carlo returns G_t of each episode (column) of rewards (T, N), which are
    0 past its end. bootstrap (T, N), if given, holds V(s_{t+1}) at the last step of an
    episode that a time limit cut short, 0 elsewhere: the task would have gone on, so
    the value of the state reached stands in for the rewards that would follow. ratio
    (T, N), if given, holds ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t) of a batch of π_old:
    each r_{t'} then carries the ratios of the actions after t up to t'
    (per-decision)."""
    if bootstrap is not None:
        rewards = rewards + gamma * bootstrap
    returns = torch.zeros_like(rewards)
    future = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # G_t = r_t + γ G_{t+1} = Σ_{t'≥t} γ^{t'−t} r_{t'}, the reward-to-go (Guberina's
        # RL notes, eq. 1.30, discounted): only the rewards that a_t can influence
        future = rewards[t] + gamma * future
        returns[t] = future
        if ratio is not None:
            # G̃_{t−1} = r_{t−1} + γ ρ_t G̃_t
            #        = Σ_{t'≥t−1} γ^{t'−t+1} (∏_{t≤t''≤t'} ρ_{t''}) r_{t'},
            # per-decision importance sampling (Precup et al. 2000)
            future = ratio[t] * future
    return returns


def baseline_values(kind: str, returns, values, alive):
    """b(s_t): 0, the batch mean of G_t over the steps of its episodes, the mean of G_t
    at each step t, or V_w(s_t). Any b that does not depend on a_t leaves the gradient
    unbiased; V_w is detached, since b must not carry a gradient of its own. The two
    means include the episode's own G_t, a bias of order 1/(episodes averaged)."""
    if kind == "mean":
        # b = the mean G_t over all steps of the batch, one constant (Guberina's RL
        # notes, eq. 1.33, averages whole-episode returns r(τ_i) instead)
        return returns[alive].mean()
    if kind == "time-mean":
        # b_t = (1/N_t) Σ_i G_{i,t}, over the N_t episodes that reach step t (Guberina's
        # RL notes, eq. 1.71, with G_{i,t} for Q(s_{i,t}, a_{i,t}) and N_t for N): t is
        # the step since the episode's start, as every episode starts at row 0; where
        # one episode alone reaches t, its weight there is 0. (T, 1)
        reached = alive.sum(1, keepdim=True)
        return (returns * alive).sum(1, keepdim=True) / reached.clamp(min=1)
    if kind == "value":
        # b(s_t) = V_w(s_t), a state-dependent baseline
        return values.detach()
    return torch.zeros_like(returns)


def pg_weights(
    returns, b, alive, gamma: float, weight_by_gamma_t: bool, normalize: bool
):
    """Ψ_t, the weight of ∇ log π(a_t|s_t): G_t − b(s_t), times γ^t for option 2,
    optionally divided by its std over the batch, and 0 past each episode's end.
    Constant in θ: only log π carries the gradient."""
    # Ψ_t = G_t − b(s_t) (Guberina's RL notes, eq. 1.32, per step)
    weights = returns - b
    if weight_by_gamma_t:
        # option 2: γ^t G_t = Σ_{t'≥t} γ^{t'} r_{t'}, the return discounted from s_0
        t = torch.arange(len(weights), device=weights.device).unsqueeze(1)
        weights = weights * gamma**t
    if normalize:
        # a common scale across batches; subtracting the mean too would be a mean
        # baseline in disguise
        weights = weights / (weights[alive].std() + 1e-8)
    return weights * alive


def value_loss(values, returns, alive):
    """Mean of (V_w(s_t) − G_t)² over the steps of the batch's episodes: V_w regresses
    on the Monte-Carlo G_t (Guberina's RL notes, eq. 1.87, with y_t = G_t)."""
    return ((values - returns) ** 2)[alive].mean()


# ── Off-policy steps: π_old's batch, importance weighted ──
# After the first step on a batch, θ ≠ θ_old: the episodes are samples of π_old, and
# E_{τ~π_old}[(p_θ(τ)/p_old(τ)) f(τ)] = E_{τ~π_θ}[f(τ)] (Guberina's RL notes, eq.
# 1.43-1.47), where the dynamics cancel from p_θ(τ)/p_old(τ) = ∏_t ρ_t (eq. 1.50).
def importance_weights(log_ratio, alive, kind: str):
    """w (T, N), the weight of π_old's term t for π_θ, from log_ratio (T, N) = log ρ_t =
    log π_θ(a_t|s_t) − log π_old(a_t|s_t): the episode's W = ∏_t ρ_t on each of its
    steps (trajectory), w_t = ∏_{t'≤t} ρ_{t'} (per-decision) or ρ_t (per-step). Each
    product is a sum of logs, exponentiated once, per episode (column): a product of
    hundreds of ratios underflows or overflows where its log does not."""
    # log ρ_t = 0 past each episode's end, where it took no action
    log_ratio = torch.where(alive, log_ratio, 0.0)
    if kind == "per-step":
        # ρ_t alone: blind to how π_θ ≠ π_old would change which states s_t are
        # reached, a first-order approximation, the r_t(θ) of TRPO's and PPO's surrogate
        return log_ratio.exp()
    # log w_t = Σ_{t'≤t} log ρ_{t'}
    log_w = log_ratio.cumsum(0)
    if kind == "trajectory":
        # log W = Σ_t log ρ_t over the whole episode: its last row, on every step
        log_w = log_w[-1:].expand_as(log_w)
    return log_w.exp()


def effective_sample_size(w):
    """ESS/N = (Σ_i w_i)² / (N Σ_i w_i²) of N importance weights w (1-D): 1 when all are
    equal, 1/N when one carries them all (Kong 1992). In float64: a weight of 1e20
    squares to a finite number there."""
    w = w.double()
    return w.sum() ** 2 / (len(w) * w.square().sum())


# ── Networks ──
def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0):
    """Orthogonal weights of gain `std`, a constant bias (as OpenAI baselines' PPO)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(n_in: int, n_out: int, hidden: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(n_in, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, n_out), std=out_std),
    )


class Agent(nn.Module):
    """The policy π_θ (softmax logits, or the Gaussian mean with a free log σ) and, for
    --baseline value, a separate critic V_w(s) with a linear output (values are
    unbounded)."""

    def __init__(self, obs_space, act_space, hidden: int, with_value: bool):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim = obs_space.shape[0]
        if self.discrete:
            act_dim = act_space.n
        else:
            act_dim = act_space.shape[0]
        # starts near the uniform π, or μ ≈ 0
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)
        self.critic = None
        if with_value:
            self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            low = torch.as_tensor(act_space.low, dtype=torch.float32)
            high = torch.as_tensor(act_space.high, dtype=torch.float32)
            self.register_buffer("low", low)
            self.register_buffer("high", high)

    def value(self, obs):
        """V_w(s)."""
        return self.critic(obs).squeeze(-1)

    def logp_entropy(self, obs, actions):
        """log π_θ(a|s), in the tape, and the entropy H[π_θ(·|s)] of each step."""
        out = self.actor(obs)
        if self.discrete:
            return categorical_logp(out, actions), categorical_entropy(out)
        logp = gaussian_logp(out, self.log_std, actions)
        return logp, gaussian_entropy(self.log_std).expand_as(logp)

    def sample(self, obs):
        """a ~ π_θ(·|s)."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample
            # of softmax(z), ~2.5× faster than torch.multinomial on a small batch
            return (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped
        to the bounds."""
        device = self.actor[0].weight.device
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
        out = self.actor(obs)
        if self.discrete:
            action = out.argmax(-1)
        else:
            action = out.clamp(self.low, self.high)
        return action.cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Agent:
    return Agent(obs_space, act_space, args.hidden, args.baseline == "value")


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


# ── Training: N complete episodes with π_θ → G_t, b(s_t), Ψ_t → one step → log ──
@dataclass
class Episodes:
    """One complete episode per env, padded to the longest, T steps; every tensor is
    (T, N) unless noted."""

    obs: torch.Tensor
    """s_t, (T, N, obs_dim)"""
    actions: torch.Tensor
    """a_t as sampled, before clipping to the bounds: (T, N) or (T, N, act_dim)"""
    rewards: torch.Tensor
    """r_t, 0 past each episode's end"""
    alive: torch.Tensor
    """True up to each episode's last step, then False"""
    final_obs: torch.Tensor
    """s_T, the true observation after each episode's last step, (N, obs_dim)"""
    cut: torch.Tensor
    """(N,) True where a time limit ended the episode (truncated, not terminated)"""

    def truncation_bootstrap(self, value) -> Optional[torch.Tensor]:
        """(T, N): V(s_T) at the last step of each episode that a time limit cut short,
        0 elsewhere (None if none was): a time limit is not the end of the task, so G_t
        bootstraps from the value of the state reached."""
        if not self.cut.any():
            return None
        bootstrap = torch.zeros_like(self.rewards)
        # the last step T_i − 1 of each cut episode i, and its column i
        last = self.alive.sum(0)[self.cut] - 1
        column = self.cut.nonzero().squeeze(1)
        with torch.no_grad():
            bootstrap[last, column] = value(self.final_obs[self.cut])
        return bootstrap


def run_episodes(envs, agent: Agent, run) -> Episodes:
    """One complete episode per env with the current π_θ. The envs step together until
    the longest episode ends; an env whose episode is over keeps stepping (a vector env
    steps all or none), but those steps are masked out: not used, not counted in
    run.step and not logged. Taking exactly one episode per env keeps the batch an
    i.i.d. sample of episodes (stopping at the first K episodes to end would favour
    short ones)."""
    device = agent.actor[0].weight.device
    space = envs.single_action_space
    obs, _ = envs.reset()
    alive = np.ones(envs.num_envs, dtype=bool)
    final_obs = np.zeros(obs.shape, dtype=np.float32)
    cut = np.zeros(envs.num_envs, dtype=bool)
    steps = []  # (s_t, a_t, r_t, alive_t) of the N envs
    while alive.any():
        with torch.inference_mode():
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)
            action = agent.sample(obs_tensor).cpu().numpy()
        # the env gets a legal action; π keeps the sampled one for log π(a|s)
        legal = action
        if not agent.discrete:
            legal = np.clip(action, space.low, space.high)
        next_obs, reward, terminated, truncated, info = envs.step(legal)
        steps.append((obs, action, reward * alive, alive.copy()))
        obs = next_obs
        run.step += int(alive.sum())
        ended = alive & (terminated | truncated)
        if ended.any():
            # SAME_STEP autoreset: obs already starts a new episode; s_T is in final_obs
            final_obs[ended] = np.stack(info["final_obs"][ended])
            cut[ended] = ~terminated[ended]
            # only the episodes of the batch
            run.log_episodes({"episode": info["episode"], "_episode": ended})
            alive &= ~ended
    obs, actions, rewards, alive = zip(*steps)

    def tensor(x):
        return torch.as_tensor(x, device=device)

    return Episodes(
        obs=tensor(np.stack(obs, dtype=np.float32)),
        actions=tensor(np.stack(actions)),
        rewards=tensor(np.stack(rewards, dtype=np.float32)),
        alive=tensor(np.stack(alive)),
        final_obs=tensor(final_obs),
        cut=tensor(cut),
    )


def estimate(args: Args, agent: Agent, ep: Episodes):
    """G_t (bootstrapped where a time limit cut an episode, given a V_w) and b(s_t).
    Returns (values, bootstrap, returns, b): V_w(s_t) in the tape (None without a V_w),
    V_w(s_T) at each cut episode's last step and 0 elsewhere (None if none was cut, or
    without a V_w), G_t and b(s_t), each (T, N) (b may be a scalar or (T, 1))."""
    values = None
    bootstrap = None
    if agent.critic is not None:
        # V_w(s_t), (T, N), in the tape for V_w's regression on G_t
        values = agent.value(ep.obs)
        bootstrap = ep.truncation_bootstrap(agent.value)
    returns = reward_to_go(ep.rewards, args.gamma, bootstrap)
    b = baseline_values(args.baseline, returns, values, ep.alive)
    return values, bootstrap, returns, b


def off_policy_pg_weights(args: Args, ep: Episodes, log_ratio, bootstrap, returns, b):
    """(w, Ψ), each (T, N), of a step on π_old's batch: the estimate of ∇J(θ) is
    (1/N) Σ_i Σ_t w_t ∇ log π_θ(a_t|s_t) Ψ_t. Trajectory and per-step keep REINFORCE's
    Ψ_t = G_t − b(s_t); per-decision weights each reward inside G_t by the ratios up to
    it, G̃_t, so that w_t Ψ_t = Σ_{t'≥t} γ^{t'−t} w_{t'} r_{t'} − w_t b(s_t). At
    θ = θ_old (log_ratio = 0) w is 1 and Ψ is REINFORCE's, exactly."""
    w = importance_weights(log_ratio, ep.alive, args.importance)
    if args.importance == "per-decision":
        # G̃_t = r_t + γ ρ_{t+1} G̃_{t+1}: r_{t'} carries ∏_{t<t''≤t'} ρ_{t''}, and w_t
        # the rest, ∏_{t''≤t}: w_t G̃_t = Σ_{t'≥t} γ^{t'−t} w_{t'} r_{t'}
        ratio = importance_weights(log_ratio, ep.alive, "per-step")
        returns = reward_to_go(ep.rewards, args.gamma, bootstrap, ratio)
    option_2 = args.weight_by_gamma_t
    normalize = args.normalize_returns
    weights = pg_weights(returns, b, ep.alive, args.gamma, option_2, normalize)
    return w, weights


def update(
    args: Args, agent: Agent, optimizer, ep: Episodes, values, bootstrap, returns, b
):
    """K = --update-epochs steps of π_θ on −J: the first on-policy, with V_w's
    regression on G_t, the others on the same batch of π_old, importance weighted; then
    vf_iters − 1 more steps of V_w alone. Returns what to log, as tensors: the losses of
    the first step, diagnostics of the batch, and for K > 1 the mean ESS/N of steps
    2..K and their largest weight (.item() only when they are logged: each is a
    sync)."""
    option_2 = args.weight_by_gamma_t
    normalize = args.normalize_returns
    # Ψ_t = G_t − b(s_t), (T, N)
    weights = pg_weights(returns, b, ep.alive, args.gamma, option_2, normalize)
    logp, entropy = agent.logp_entropy(ep.obs, ep.actions)
    pg_loss = policy_gradient_loss(logp, weights)
    stats = {"losses/policy_loss": pg_loss}
    loss = pg_loss
    if values is not None:
        v_loss = value_loss(values, returns, ep.alive)
        stats["losses/value_loss"] = v_loss
        loss = pg_loss + v_loss
    check_finite(**stats)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    # log π_old(a_t|s_t): the policy that collected the batch, θ before the first step
    logp_old = logp.detach()
    ess = []
    max_weight = []
    for _ in range(args.update_epochs - 1):
        logp, _ = agent.logp_entropy(ep.obs, ep.actions)
        # log ρ_t = log π_θ(a_t|s_t) − log π_old(a_t|s_t), detached: w is a constant
        # factor of each term, and only log π_θ carries the gradient (for per-step,
        # w_t ∇ log π_θ = ∇ρ_t: the gradient of the surrogate Σ ρ_t(θ) Ψ_t)
        log_ratio = logp.detach() - logp_old
        w, off_weights = off_policy_pg_weights(
            args, ep, log_ratio, bootstrap, returns, b
        )
        # −(1/N) Σ_i Σ_t w_t log π_θ(a_t|s_t) Ψ_t
        off_loss = policy_gradient_loss(logp, w * off_weights)
        check_finite(**{"losses/policy_loss (importance weighted)": off_loss})
        optimizer.zero_grad(set_to_none=True)  # V_w's grads stay None: Adam skips it
        off_loss.backward()
        optimizer.step()
        # one weight per term: per episode (trajectory), else per step
        if args.importance == "trajectory":
            terms = w[0]
        else:
            terms = w[ep.alive]
        ess.append(effective_sample_size(terms))
        max_weight.append(terms.max())
    if values is not None:
        for _ in range(args.vf_iters - 1):
            optimizer.zero_grad(set_to_none=True)
            value_loss(agent.value(ep.obs), returns, ep.alive).backward()
            optimizer.step()
    # RMS of Ψ_t = G_t − b(s_t): the scale of each term of the gradient estimate, which
    # a baseline shrinks (a std would not show it: subtracting the batch mean leaves
    # the std of G_t unchanged)
    stats["diagnostics/weights_rms"] = weights[ep.alive].square().mean().sqrt()
    stats["diagnostics/entropy"] = entropy[ep.alive].mean()
    if ess:
        # ESS/N averaged over steps 2..K, the largest weight over them
        stats["diagnostics/ess"] = torch.stack(ess).mean()
        stats["diagnostics/max_weight"] = torch.stack(max_weight).max()
    return stats


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    # seeds the envs once; each batch then starts fresh episodes from that stream
    envs.reset(seed=args.seed)
    agent = make_agent(args, obs_space, act_space).to(device)
    # fused=True: one kernel for all parameters, on CPU ~4x faster steps than default
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, fused=True)
    with Run(args, agent) as run:
        # whole episodes: the last batch may end past --total-timesteps
        while run.step < args.total_timesteps:
            lr = args.learning_rate
            if args.anneal_lr:
                # α decays linearly to 0 over --total-timesteps
                lr = args.learning_rate * (1.0 - run.step / args.total_timesteps)
            optimizer.param_groups[0]["lr"] = lr

            # ---- collect: N complete episodes with π_θ ----
            ep = run_episodes(envs, agent, run)
            run.progress()

            # ---- estimate: G_t, b(s_t) ----
            values, bootstrap, returns, b = estimate(args, agent, ep)

            # ---- update: K steps of π_θ on −J, V_w on (V_w(s_t) − G_t)² ----
            stats = update(args, agent, optimizer, ep, values, bootstrap, returns, b)

            # ---- log ----
            if run.due():
                scalars = {tag: x.item() for tag, x in stats.items()}
                scalars["charts/learning_rate"] = lr
                run.log(scalars)
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
