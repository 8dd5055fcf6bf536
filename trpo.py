"""TRPO with GAE(λ), for Discrete and Box action spaces.

Trust Region Policy Optimization (Schulman et al. 2015, arXiv:1502.05477). Each
iteration: T steps of N envs with π_old, Â_t by GAE(λ) (arXiv:1506.02438), ONE policy
step inside a trust region on the KL divergence, then regression of a separate critic
V(s) on R_t = Â_t + V(s_t):

  maximise  L(θ) = Ê[r_t(θ) Â_t],   r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t),
  such that KL̄(θ) = Ê[KL(π_old‖π_θ)(s_t)] ≤ δ
  x = F⁻¹ g by conjugate gradient from products F·v alone,  g = ∇L(θ_old),
      F = ∇²KL̄(θ_old) = E[∇log π ∇log πᵀ], the Fisher information
  θ = θ_old + κ^j √(2δ / xᵀFx) x, the first j = 0, 1, ... with KL̄ ≤ δ and L improved
  θ = θ_old + α x    with --npg-step α > 0 instead: the natural gradient with a fixed
      step (Guberina's RL notes, eq. 1.64-1.67: pick α rather than the radius), no line
      search, no KL check; TRPO's first step is this one with α = √(2δ / gᵀF⁻¹g)

Importance sampling, E_p[f] = E_q[(p/q) f], lets π_old's samples score π_θ; over whole
trajectories it takes Π_t r_t(θ), which explodes or vanishes over long horizons. L
reweights each action alone, on π_old's states, so it equals J(θ) − J(θ_old) only to
first order, near θ_old. Why a KL and not ‖θ − θ_old‖ ≤ ε? How far π moves per unit of
θ depends on the parametrisation: with a two-action softmax on the logit z = 100 θ,
π = (0.4, 0.6) at θ = −0.004 is (1.00, 0.00) at θ = 0.06. The KL bounds the
distribution's change; its step is the natural gradient (Kakade 2001).

Discrete: softmax policy. Box: diagonal Gaussian, state-independent log σ, clipped to
the bounds when stepped, running observation and reward normalisation. Defaults:
RL-Zoo's TRPO settings for CartPole-v1 but δ = 0.005, for a Box env its MuJoCo ones
(BOX_DEFAULTS). Once CartPole is solved, Â carries little signal, yet every update
still moves π by KL δ: the greedy policy ended below 475 on 6 of seeds 31-70 at
δ = 0.01, on 1 at 0.005 (benchmarks/results/seeds/trpo-a2c-seeds.md).
Usage: python trpo.py --env-id Hopper-v5 --seed 3
       python trpo.py --eval-model runs/<run>/trpo.pt
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
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    # The algorithm
    num_steps: int = 512
    """T: steps per env in each rollout (Box: 1024); typically 512-2048"""
    gamma: float = 0.99
    """γ: discount factor; typically 0.98-0.999"""
    gae_lambda: float = 0.98
    """λ: GAE, 0 = one-step TD, 1 = Monte Carlo (Box: 0.95); typically 0.9-0.99"""
    max_kl: float = 0.005
    """δ: trust-region radius, max KL(π_old‖π_θ) per update (Box: 0.01); ~0.005-0.05"""
    cg_iters: int = 15
    """k: conjugate-gradient iterations for x ≈ F⁻¹g (Box: 25); typically 10-25"""
    cg_tol: float = 1e-5
    """conjugate gradient stops once the residual ‖g − Fx‖ is below this"""
    cg_damping: float = 1e-3
    """solve with F + damping·I, well conditioned (Box: 0.1); typically 1e-3-0.1"""
    backtrack_coef: float = 0.8
    """κ: the line search tries the steps κ^j √(2δ / xᵀFx) x; typically 0.5-0.8"""
    backtrack_iters: int = 10
    """steps j = 0, 1, ... the line search tries before it rejects the update"""
    npg_step: float = 0.0
    """α: if > 0, θ ← θ + α F⁻¹g with no line search or KL check (0: TRPO); ~0.1-1"""
    norm_adv: bool = True
    """normalise Â_t to zero mean and unit std over each rollout"""
    learning_rate: float = 1e-3
    """Adam step size of the value network; typically 3e-4-1e-3"""
    vf_epochs: int = 20
    """passes of value regression over each rollout; typically 5-20"""
    vf_minibatches: int = 2
    """minibatches per value epoch (Box: 16)"""
    normalize: bool = False
    """running observation and reward normalisation (Box: on)"""
    hidden: int = 64
    """width of the two hidden layers of the policy and of the value network"""

    # The run
    env_id: str = "CartPole-v1"
    """gymnasium environment id"""
    total_timesteps: int = 100_000
    """environment steps to train for, rounded up to whole iterations"""
    num_envs: int = 2
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


# RL-Zoo's MuJoCo settings: they replace the defaults above for a Box action space.
BOX_DEFAULTS = dict(
    total_timesteps=1_000_000,
    num_steps=1024,
    max_kl=0.01,
    gae_lambda=0.95,
    cg_iters=25,
    cg_damping=0.1,
    vf_minibatches=16,
    normalize=True,
)


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, the settings TRPO cannot run with."""
    env = args.env_id
    N = args.num_envs
    T = args.num_steps
    m = args.vf_minibatches
    iters = args.backtrack_iters
    lr = args.learning_rate
    kappa = args.backtrack_coef
    damping = args.cg_damping
    tol = args.cg_tol
    lam = args.gae_lambda
    npg = args.npg_step
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations (an MLP's input); {env} has {obs_space}")
    known = isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box))
    check(known, f"needs a Discrete or Box action space; {env} has {act_space}")
    check(N >= 1, f"--num-envs {N} must be >= 1")
    check(T >= 1, f"--num-steps {T} must be >= 1")
    check(N * T >= 2, f"--num-steps {T}: num_envs * num_steps must be >= 2")
    check(m >= 1, f"--vf-minibatches {m} must be >= 1")
    check(N * T % m == 0, f"--vf-minibatches {m} must divide num_envs * num_steps")
    check(args.vf_epochs >= 1, f"--vf-epochs {args.vf_epochs} must be >= 1")
    check(args.cg_iters >= 1, f"--cg-iters {args.cg_iters} must be >= 1")
    check(iters >= 1, f"--backtrack-iters {iters} must be >= 1")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    check(0 <= args.gamma <= 1, f"--gamma {args.gamma} must lie in [0, 1]")
    check(0 <= lam <= 1, f"--gae-lambda {lam} must lie in [0, 1]")
    check(0 < args.max_kl < math.inf, f"--max-kl {args.max_kl} must be > 0 and finite")
    check(0 < lr < math.inf, f"--learning-rate {lr} must be > 0 and finite")
    check(0 < kappa < 1, f"--backtrack-coef {kappa} must lie in (0, 1)")
    check(0 <= damping < math.inf, f"--cg-damping {damping} must be >= 0 and finite")
    check(0 <= tol < math.inf, f"--cg-tol {tol} must be >= 0 and finite")
    check(0 <= npg < math.inf, f"--npg-step {npg} must be >= 0 and finite")


# ── The estimators and the trust-region step, in the order the lecture derives them ──
def compute_gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
    """GAE(λ) advantages Â_t of a rollout; every argument has shape (T, N).
    next_values[t] is V(s_{t+1}) of the same episode (V of the true last observation
    where the episode was truncated); terminations[t] = 1 where s_{t+1} is terminal;
    dones[t] = 1 where the episode ended at step t (terminated or truncated)."""
    # δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)
    deltas = rewards + gamma * (1.0 - terminations) * next_values - values
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # Â_t = δ_t + γλ (1 − done_t) Â_{t+1}: Σ_l (γλ)^l δ_{t+l} to the episode's end
        next_advantage = (
            deltas[t] + gamma * gae_lambda * (1.0 - dones[t]) * next_advantage
        )
        advantages[t] = next_advantage
    return advantages


def surrogate(logp, logp_old, advantages):
    """L(θ) = Ê[r_t(θ) Â_t], importance-sampled: π_old drew a_t, π_θ is scored."""
    # r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t), in log space for stability
    ratio = (logp - logp_old).exp()
    return (ratio * advantages).mean()


def categorical_kl(logits_old, logits):
    """KL(π_old‖π_θ) per state, for softmax policies."""
    logp_old = logits_old.log_softmax(-1)
    logp = logits.log_softmax(-1)
    # KL(π_old‖π_θ) = Σ_a π_old(a) (log π_old(a) − log π_θ(a))
    return (logp_old.exp() * (logp_old - logp)).sum(-1)


def gaussian_kl(mean_old, log_std_old, mean, log_std):
    """KL(π_old‖π_θ) per state, for diagonal Gaussians: the joint KL over the action
    dimensions, which δ bounds (sb3-contrib's mean over them is |A|× looser)."""
    var_old = (2 * log_std_old).exp()
    var = (2 * log_std).exp()
    # KL(N(μ_0, σ_0²) ‖ N(μ, σ²)) = Σ_i [log σ/σ_0 + (σ_0² + (μ_0 − μ)²) / (2σ²) − ½]
    kl = log_std - log_std_old + (var_old + (mean_old - mean) ** 2) / (2 * var) - 0.5
    return kl.sum(-1)


def flat_grad(y, params, **kwargs) -> torch.Tensor:
    """∇_θ y as one flat vector, in parameters_to_vector's order."""
    grads = torch.autograd.grad(y, params, **kwargs)
    return torch.cat([g.reshape(-1) for g in grads])


def fisher_vector_product(kl, params, damping: float):
    """v ↦ (F + damping·I) v, F = ∇²KL̄ at θ_old: there the Hessian of the mean
    KL(π_old‖π_θ) equals the Fisher E[∇log π ∇log πᵀ] (∇KL̄ vanishes at θ_old).
    kl: KL̄ at θ_old with its graph. F itself (n² numbers) is never formed."""
    # differentiable: ∇_θ (∇KL̄ · v) = (∇²KL̄) v for a constant v
    grad_kl = flat_grad(kl, params, create_graph=True)
    return lambda v: flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v


def conjugate_gradient(Avp, b, iters: int, tol: float):
    """x ≈ A⁻¹ b for a symmetric positive-definite A given only as v ↦ Av, in at most
    `iters` steps (exact after n in exact arithmetic); stops once the residual
    ‖b − Ax‖ < tol. Returns x and that residual norm."""
    x = torch.zeros_like(b)
    # the residual r = b − Ax, and p: the search direction
    r = b.clone()
    p = b.clone()
    rr = b @ b
    for _ in range(iters):
        if rr.sqrt() < tol:
            break
        Ap = Avp(p)
        # the textbooks' α_k: the exact minimiser of ½xᵀAx − bᵀx along p
        step = rr / (p @ Ap)
        x = x + step * p
        r = r - step * Ap
        rr_new = r @ r
        # the next direction: the residual, made A-conjugate to p
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, rr.sqrt()


def line_search(params, full_step, objectives, surrogate_old, max_kl, coef, iters):
    """θ = θ_old + κ^j full_step (coef: κ, Spinning Up's α) for the first j = 0, 1, ...
    with KL̄(θ) ≤ δ and L(θ) > L(θ_old), as the quadratic model can be wrong far from
    θ_old; else θ_old. objectives() gives (L, KL̄) at θ. Returns (accepted, steps
    tried, L, KL̄)."""
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        for j in range(iters):
            vector_to_parameters(theta_old + coef**j * full_step, params)
            surr, kl = objectives()
            if kl <= max_kl and surr > surrogate_old:
                return True, j + 1, surr, kl
        vector_to_parameters(theta_old, params)
    return False, iters, surrogate_old, torch.zeros_like(surrogate_old)


def natural_gradient_step(params, full_step, objectives):
    """θ = θ_old + full_step, full_step = α x ≈ α F⁻¹g: the natural gradient with a
    fixed step α (Guberina's RL notes, eq. 1.64-1.67), taken whatever L and KL̄ then
    are: no line search, and KL̄ may exceed δ. objectives() gives (L, KL̄) at θ.
    Returns (accepted, steps tried, L, KL̄) as line_search does."""
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        vector_to_parameters(theta_old + full_step, params)
        surr, kl = objectives()
    return True, 1, surr, kl


def trpo_update(agent: "Agent", obs, actions, advantages, args: Args) -> dict:
    """One natural-gradient step of π_θ on a fixed batch, inside the trust region
    KL̄ ≤ δ (or of fixed size α, --npg-step). Returns diagnostics as tensors: their
    .item() waits for run.due()."""
    max_kl = args.max_kl
    # θ: the actor and log σ, not the critic
    named = agent.named_parameters()
    params = [p for name, p in named if not name.startswith("critic.")]
    if agent.discrete:
        kl_fn = categorical_kl
    else:
        kl_fn = gaussian_kl
    # π_old: θ has not moved since it collected the batch
    with torch.no_grad():
        dist_old = agent(obs)
        logp_old, _ = agent.logp_entropy(obs, actions)

    def objectives():
        """L(θ) and KL̄(θ) = Ê[KL(π_old‖π_θ)(s_t)] at the current θ: the paper's
        direction, and CSCI 1470 (Ewing)'s second deck's; its day-31 deck ("Trust
        Region Policy Optimization") writes KL(π_new‖π_old) ≤ Δ, and Guberina's RL
        notes, eq. 1.66, D_KL(π_θ′‖π_θ) with θ′ the new policy."""
        logp, _ = agent.logp_entropy(obs, actions)
        kl = kl_fn(*dist_old, *agent(obs)).mean()
        return surrogate(logp, logp_old, advantages), kl

    # at θ_old r_t = 1 and KL̄ = 0, but their derivatives are what the step needs
    surr_old, kl = objectives()
    # g = ∇L(θ_old) = Ê[∇log π_θ(a_t|s_t) Â_t]
    g = flat_grad(surr_old, params)
    Fvp = fisher_vector_product(kl, params, args.cg_damping)
    # the natural-gradient direction x ≈ F⁻¹ g
    x, residual = conjugate_gradient(Fvp, g, args.cg_iters, args.cg_tol)
    surr_old = surr_old.detach()
    if args.npg_step > 0:
        # the natural gradient: θ = θ_old + α x, α fixed (--npg-step)
        step_scale = torch.tensor(args.npg_step, dtype=x.dtype, device=x.device)
        full_step = step_scale * x
        result = natural_gradient_step(params, full_step, objectives)
    else:
        # s = √(2δ / xᵀFx) puts the quadratic model KL̄ ≈ ½ (sx)ᵀF(sx) at δ: the
        # natural gradient's α, solved from δ (xᵀFx = gᵀF⁻¹g for x = F⁻¹g)
        step_scale = torch.sqrt(2 * max_kl / (x @ Fvp(x)))
        full_step = step_scale * x
        kappa = args.backtrack_coef
        iters = args.backtrack_iters
        result = line_search(
            params, full_step, objectives, surr_old, max_kl, kappa, iters
        )
    accepted, steps, surr, kl = result
    return {
        "kl": kl,
        "surrogate_improvement": surr - surr_old,
        "line_search_steps": steps,
        "line_search_accepted": float(accepted),
        "cg_residual": residual,
        "step_scale": step_scale,
    }


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
    """π_θ(a|s), softmax or a diagonal Gaussian with a free, state-independent log σ,
    and a separate critic V(s) with a linear output (values are unbounded): TRPO moves
    θ by a constrained step and V by regression, sharing nothing."""

    def __init__(self, obs_space, act_space, hidden: int, normalize: bool):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim = obs_space.shape[0]
        if self.discrete:
            act_dim = act_space.n
        else:
            act_dim = act_space.shape[0]
        self.obs_rms = None
        if normalize:
            self.obs_rms = RunningMeanStd(obs_dim)
        # out_std 0.01: starts near the uniform π, or μ ≈ 0
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            low = torch.as_tensor(act_space.low, dtype=torch.float32)
            high = torch.as_tensor(act_space.high, dtype=torch.float32)
            self.register_buffer("low", low)
            self.register_buffer("high", high)

    def forward(self, obs):
        """π_θ(·|s) as (logits,) or (μ, log σ): the form the closed-form KLs take."""
        out = self.actor(obs)
        if self.discrete:
            return (out,)
        return out, self.log_std.expand_as(out)

    def logp_entropy(self, obs, actions):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch, in closed form."""
        dist = self(obs)
        if self.discrete:
            # log π(a|s) = z_a − log Σ_b exp z_b
            logp_all = dist[0].log_softmax(-1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            # H = −Σ_a π(a|s) log π(a|s)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            return logp, entropy
        mean, log_std = dist
        # log N(a; μ, σ²), summed over the independent action dimensions
        z = (actions - mean) / log_std.exp()
        logp = (-0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        # H = Σ_i (½ log(2πe) + log σ_i)
        entropy = (0.5 + 0.5 * np.log(2 * np.pi) + log_std).sum(-1)
        return logp, entropy

    def sample(self, obs):
        """a ~ π_θ(·|s)."""
        dist = self(obs)
        if self.discrete:
            # Gumbel-max: argmax_a (z_a − log E_a), E_a ~ Exp(1), samples softmax(z);
            # ~2.5× faster than torch.multinomial on a small batch
            log_noise = torch.empty_like(dist[0]).exponential_().log()
            return (dist[0] - log_noise).argmax(-1)
        mean, log_std = dist
        return mean + log_std.exp() * torch.randn_like(mean)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        if self.obs_rms is None:
            return obs
        return self.obs_rms(obs)

    def value(self, obs):
        """V(s)."""
        return self.critic(obs).squeeze(-1)

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """What the env is given: a Gaussian sample is clipped to the bounds."""
        if not self.discrete:
            action = action.clamp(self.low, self.high)
        return action.cpu().numpy()

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """For evaluation: argmax π, or the mean clipped to the bounds."""
        device = self.critic[0].weight.device
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
        out = self.actor(self.normalize(obs))
        if self.discrete:
            return out.argmax(-1).cpu().numpy()
        return out.clamp(self.low, self.high).cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Agent:
    return Agent(obs_space, act_space, args.hidden, args.normalize)


# ── Observation and reward normalisation (Box), and the environments ──
class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update),
    as buffers: saved in the state dict, so evaluation sees what training saw."""

    def __init__(self, shape=()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, x: torch.Tensor):
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        n = x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var.copy_(m2 / total)
        self.mean.add_(delta * n / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor, clip: float = 10.0) -> torch.Tensor:
        z = (x - self.mean) / (self.var + 1e-8).sqrt()
        return z.clamp(-clip, clip).to(x.dtype)


class RewardScale:
    """r_t / std(discounted return), clipped to ±10: the scale of the return, not of r_t
    (as SB3's VecNormalize and CleanRL's NormalizeReward)."""

    def __init__(self, num_envs: int, gamma: float, device):
        self.gamma = gamma
        self.rms = RunningMeanStd().to(device)
        # per-env Σ_k γ^k r_{t-k}, (N,)
        self.discounted = torch.zeros(num_envs, dtype=torch.float64, device=device)

    def __call__(self, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        self.discounted = self.discounted * self.gamma + reward
        self.rms.update(self.discounted)
        self.discounted.masked_fill_(done, 0.0)
        return (reward / (self.rms.var + 1e-8).sqrt()).clamp(-10, 10)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R]: 1 for a perfect critic, 0 for a constant one."""
    var = target.var()
    if var == 0:
        return float("nan")
    return float(1 - (target - pred).var() / var)


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


# ── Training: collect with π_old → GAE → a trust-region step of π_θ → fit V → log ──
class Rollout:
    """T steps of N envs collected with π_old; every tensor is (T, N) unless noted."""

    def __init__(self, T: int, N: int, obs_space, act_space, device):
        # normalised s_t, (T, N, obs_dim)
        self.obs = torch.zeros((T, N) + obs_space.shape, device=device)
        # a_t, (T, N) or (T, N, act_dim)
        self.actions = torch.zeros((T, N) + act_space.shape, device=device)
        # r_t (scaled where --normalize)
        self.rewards = torch.zeros((T, N), device=device)
        # term_t = 1 where s_{t+1} is terminal
        self.terminations = torch.zeros((T, N), device=device)
        # done_t = 1 where the episode ended at step t (terminated or truncated)
        self.dones = torch.zeros((T, N), device=device)
        # V(true last observation) where the episode was truncated at step t, else 0
        self.trunc_values = torch.zeros((T, N), device=device)


@torch.inference_mode()
def collect_rollout(envs, agent, buf: Rollout, next_obs, reward_scale, run):
    """Fill `buf` with T steps of every env under a ~ π_old(·|s_t); returns s_T, where
    the next rollout starts. log π_old and V(s_t) come later, in one batched pass: θ
    and V do not change while collecting."""
    device = buf.obs.device
    buf.trunc_values.zero_()
    for t in range(buf.rewards.shape[0]):
        if agent.obs_rms is not None:
            agent.obs_rms.update(next_obs)
        obs = agent.normalize(next_obs)
        action = agent.sample(obs)
        buf.obs[t] = obs
        buf.actions[t] = action
        env_action = agent.env_action(action)
        raw_obs, reward, terminated, truncated, info = envs.step(env_action)
        run.step += envs.num_envs
        run.log_episodes(info)
        next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
        done = torch.as_tensor(terminated | truncated, device=device)
        # float32: the env's rewards are float64, which MPS cannot hold
        reward = torch.as_tensor(reward, dtype=torch.float32, device=device)
        if reward_scale is not None:
            reward = reward_scale(reward, done)
        buf.rewards[t] = reward
        buf.terminations[t] = torch.as_tensor(terminated, device=device)
        buf.dones[t] = done
        # a time limit is not a terminal state: bootstrap from V(true last observation)
        if truncated.any():
            idx = np.flatnonzero(truncated)
            final = np.stack(info["final_obs"][idx])
            final = torch.as_tensor(final, dtype=torch.float32, device=device)
            buf.trunc_values[t, idx] = agent.value(agent.normalize(final))
    return next_obs


@torch.no_grad()
def estimate(agent, buf: Rollout, next_obs, args: Args):
    """Â_t by GAE(λ) and the critic targets R_t = Â_t + V(s_t), fixed during the
    update. Returns (Â_t, V(s_t), R_t), each flat over the T·N steps."""
    # V(s_t), (T, N), in one batched pass
    values = agent.value(buf.obs)
    # V(s_{t+1}) of the same episode: the next row, V(s_T) after the last one, and
    # V(true last observation) where the episode was truncated at step t
    last_value = agent.value(agent.normalize(next_obs))
    next_values = torch.cat([values[1:], last_value.unsqueeze(0)])
    next_values = torch.where(buf.dones.bool(), buf.trunc_values, next_values)
    gamma = args.gamma
    lam = args.gae_lambda
    advantages = compute_gae(
        buf.rewards, values, next_values, buf.terminations, buf.dones, gamma, lam
    )
    # R_t = Â_t + V(s_t): the regression target of V, before Â_t is normalised
    critic_targets = (advantages + values).flatten()
    advantages = advantages.flatten()
    if args.norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    return advantages, values.flatten(), critic_targets


def fit_critic(agent: Agent, critic_optimizer, obs, critic_targets, args: Args):
    """Regression Ê[(V(s_t) − R_t)²] → min on the fixed R_t: --vf-epochs passes of
    shuffled minibatches. Returns the last minibatch's loss."""
    minibatch_size = len(obs) // args.vf_minibatches
    for epoch in range(args.vf_epochs):
        order = torch.randperm(len(obs), device=obs.device)
        for mb in order.split(minibatch_size):
            value_loss = ((agent.value(obs[mb]) - critic_targets[mb]) ** 2).mean()
            check_finite(value_loss=value_loss)
            critic_optimizer.zero_grad(set_to_none=True)
            value_loss.backward()
            critic_optimizer.step()
    return value_loss.detach()


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    agent = make_agent(args, obs_space, act_space).to(device)
    # only V is trained by a gradient optimiser; fused=True: one kernel for all its
    # parameters, much faster on CPU
    lr = args.learning_rate
    critic_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=lr, fused=True)
    reward_scale = None
    if args.normalize:
        reward_scale = RewardScale(args.num_envs, args.gamma, device)
    buf = Rollout(args.num_steps, args.num_envs, obs_space, act_space, device)
    raw_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
    batch = args.num_steps * args.num_envs
    iterations = math.ceil(args.total_timesteps / batch)
    with Run(args, agent) as run:
        for iteration in range(iterations):
            # ---- collect T steps of each of the N envs with π_old ----
            next_obs = collect_rollout(envs, agent, buf, next_obs, reward_scale, run)
            run.progress()

            # ---- estimate Â_t and R_t = Â_t + V(s_t), fixed during the update ----
            advantages, values, critic_targets = estimate(agent, buf, next_obs, args)
            obs = buf.obs.flatten(0, 1)
            actions = buf.actions.flatten(0, 1)

            # ---- update: one trust-region step of π_θ, then the regression of V ----
            stats = trpo_update(agent, obs, actions, advantages, args)
            value_loss = fit_critic(agent, critic_optimizer, obs, critic_targets, args)

            # ---- log ----
            if run.due():
                stats["explained_variance"] = explained_variance(values, critic_targets)
                # σ of the Gaussian: no entropy term holds it, so watch it
                if not agent.discrete:
                    stats["std"] = agent.log_std.detach().exp().mean()
                diagnostics = {f"diagnostics/{k}": v for k, v in stats.items()}
                run.log({"losses/value_loss": value_loss, **diagnostics})
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
