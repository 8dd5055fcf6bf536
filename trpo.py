"""TRPO with GAE(λ), for Discrete and Box action spaces.

Trust Region Policy Optimization (Schulman et al. 2015, arXiv:1502.05477). Each iteration: T steps of N envs with
π_old, Â_t by GAE(λ) (arXiv:1506.02438), ONE policy step inside a trust region on the KL divergence, regression of
a separate critic V(s) on R_t = Â_t + V(s_t):

  maximise L(θ) = Ê[r_t(θ) Â_t],  r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t),  s.t. KL̄(θ) = Ê[KL(π_old‖π_θ)(s_t)] ≤ δ
  x = F⁻¹ g      g = ∇L(θ_old); F = ∇²KL̄(θ_old) = E[∇log π ∇log πᵀ], the Fisher; conjugate gradient, F·v alone
  θ = θ_old + κ^j √(2δ / xᵀFx) x,  the first j = 0, 1, ... with KL̄ ≤ δ and L improved (κ: Spinning Up's α)

Importance sampling, E_p[f] = E_q[(p/q) f], lets π_old's samples score π_θ; over whole trajectories it takes
Π_t r_t(θ), which explodes or vanishes over long horizons. L reweights each action alone, on π_old's states, so it
equals J(θ) − J(θ_old) only to first order, near θ_old. Why a KL and not ‖θ − θ_old‖ ≤ ε? How far π moves per unit
of θ depends on the parametrisation: with a two-action softmax on the logit z = 100 θ, π = (0.4, 0.6) at θ = −0.004
is (1.00, 0.00) at θ = 0.06. The KL bounds the distribution's change; its step is the natural gradient (Kakade 2001).

Discrete: softmax policy. Box: diagonal Gaussian, state-independent log σ, clipped to the bounds when stepped, running
observation and reward normalisation. Defaults: RL-Zoo's TRPO settings for CartPole-v1; for a Box env its MuJoCo
settings (BOX_DEFAULTS). Usage: python trpo.py [--env-id Hopper-v5 --seed 3 | --eval-model runs/<run>/trpo.pt]
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
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    num_steps: int = 512  # T: steps per env in each rollout (Box: 1024)
    gamma: float = 0.99  # γ: discount factor, typically 0.98-0.999
    gae_lambda: float = 0.98  # λ: GAE, 0 = one-step TD, 1 = Monte Carlo (Box: 0.95)
    target_kl: float = 0.01  # δ: trust-region radius, the largest mean KL(π_old‖π_θ) of one step; typically 0.001-0.05
    cg_iters: int = 15  # k: conjugate-gradient iterations for x ≈ F⁻¹g (Box: 25)
    cg_tol: float = 1e-5  # conjugate gradient stops once the residual ‖g − F x‖ is below this
    cg_damping: float = 1e-3  # F + damping·I, a well-conditioned solve (Box: 0.1)
    backtrack_coef: float = 0.8  # κ: the line search tries the steps κ^j √(2δ / xᵀFx) x, j = 0, 1, ...
    backtrack_iters: int = 10  # steps the line search tries before it rejects the update
    norm_adv: bool = True  # normalise Â_t to zero mean and unit std over each rollout
    learning_rate: float = 1e-3  # Adam step size of the value network
    vf_epochs: int = 20  # passes of value regression over each rollout
    vf_minibatches: int = 2  # minibatches per value epoch (Box: 16)
    normalize: bool = False  # running observation and reward normalisation (Box: on)
    hidden: int = 64  # width of the two hidden layers of the policy and of the value network

    # The run
    env_id: str = "CartPole-v1"  # gymnasium environment id
    total_timesteps: int = 100_000  # environment steps to train for (Box: 1M)
    num_envs: int = 2  # N: parallel environments
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


# RL-Zoo's MuJoCo settings, used in place of the defaults above when the env's action space is Box.
BOX_DEFAULTS = dict(total_timesteps=1_000_000, num_steps=1024, gae_lambda=0.95, cg_iters=25, cg_damping=0.1,
                    vf_minibatches=16, normalize=True)  # fmt: skip


# ── The estimators and the trust-region step, in the order the lecture derives them ──
def compute_gae(rewards, values, next_values, terminations, dones, gamma: float, gae_lambda: float):
    """GAE(λ) advantages Â_t of a rollout; every argument has shape (T, N). next_values[t] is V(s_{t+1}) of
    the same episode (V of the true last observation where the episode was truncated); terminations[t] = 1
    where s_{t+1} is terminal; dones[t] = 1 where the episode ended at step t (terminated or truncated)."""
    # δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)
    deltas = rewards + gamma * (1.0 - terminations) * next_values - values
    advantages, next_adv = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # Â_t = δ_t + γλ (1 − done_t) Â_{t+1}, i.e. Σ_l (γλ)^l δ_{t+l} up to the end of the episode
        next_adv = deltas[t] + gamma * gae_lambda * (1.0 - dones[t]) * next_adv
        advantages[t] = next_adv
    return advantages


def surrogate(logp, logp_old, advantages):  # L(θ) = Ê[r_t(θ) Â_t], importance-sampled: π_old drew a_t
    return ((logp - logp_old).exp() * advantages).mean()  # r_t(θ) = π_θ/π_old, in log space for stability


def categorical_kl(logits_old, logits):  # KL(π_old‖π_θ) = Σ_a π_old(a) (log π_old(a) − log π_θ(a))
    logp_old = logits_old.log_softmax(-1)
    return (logp_old.exp() * (logp_old - logits.log_softmax(-1))).sum(-1)


def gaussian_kl(mean_old, log_std_old, mean, log_std):  # KL(π_old‖π_θ) = KL(N(μ_0, σ_0²) ‖ N(μ, σ²)) =
    # Σ_i [log σ/σ_0 + (σ_0² + (μ_0 − μ)²) / (2σ²) − ½]: the joint KL that δ bounds (sb3-contrib's mean is |A|× looser)
    var_old, var = (2 * log_std_old).exp(), (2 * log_std).exp()
    return (log_std - log_std_old + (var_old + (mean_old - mean) ** 2) / (2 * var) - 0.5).sum(-1)


def flat_grad(y, params, **kwargs) -> torch.Tensor:  # ∇_θ y as one flat vector, in parameters_to_vector's order
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(y, params, **kwargs)])


def fisher_vector_product(kl, params, damping: float):
    """v ↦ (F + damping·I) v, F = ∇²KL̄ at θ_old, where the Hessian of the mean KL(π_old‖π_θ) equals the Fisher
    E[∇log π ∇log πᵀ] (∇KL̄ vanishes there). kl: KL̄ at θ_old with its graph. F is never formed (n² numbers)."""
    grad_kl = flat_grad(kl, params, create_graph=True)  # differentiable: ∇_θ (∇KL̄ · v) = (∇²KL̄) v for a constant v
    return lambda v: flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v


def conjugate_gradient(Avp, b, iters: int, tol: float):
    """x ≈ A⁻¹ b for a symmetric positive-definite A given only as v ↦ Av, in at most `iters` steps (exact after
    n in exact arithmetic); stops once the residual ‖b − Ax‖ < tol. Returns x and that residual norm."""
    x, r, p, rr = torch.zeros_like(b), b.clone(), b.clone(), b @ b  # residual r = b − Ax; p: search direction
    for _ in range(iters):
        if rr.sqrt() < tol:
            break
        Ap = Avp(p)
        step = rr / (p @ Ap)  # the textbooks' α_k: the exact minimiser of ½xᵀAx − bᵀx along p
        x, r = x + step * p, r - step * Ap
        rr_new = r @ r
        p, rr = r + (rr_new / rr) * p, rr_new  # the next direction: the residual, made A-conjugate to p
    return x, rr.sqrt()


def line_search(params, full_step, objectives, surrogate_old, max_kl: float, backtrack_coef: float, iters: int):
    """θ = θ_old + κ^j full_step, the first j = 0, 1, ... with KL̄(θ) ≤ δ and L(θ) > L(θ_old) (the quadratic model can
    be wrong far from θ_old), else θ_old; objectives() is (L, KL̄) at θ. Returns (accepted, steps tried, L, KL̄)."""
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        for j in range(iters):
            vector_to_parameters(theta_old + backtrack_coef**j * full_step, params)
            surr, kl = objectives()
            if kl <= max_kl and surr > surrogate_old:
                return True, j + 1, surr, kl
        vector_to_parameters(theta_old, params)
    return False, iters, surrogate_old, torch.zeros(())


def trpo_update(agent: "Agent", obs, actions, advantages, args: Args) -> dict:
    """One natural-gradient step of π_θ on a fixed batch, inside the trust region KL̄ ≤ δ; returns diagnostics."""
    params = [p for name, p in agent.named_parameters() if not name.startswith("critic.")]  # θ: actor and log σ
    max_kl, kl_fn = args.target_kl, categorical_kl if agent.discrete else gaussian_kl
    with torch.no_grad():  # π_old: θ has not moved since it collected the batch
        dist_old = agent(obs)
        logp_old = agent.log_prob(dist_old, actions)

    def objectives():  # L(θ) and KL̄(θ) = Ê[KL(π_old‖π_θ)] at the current θ, from one forward pass
        dist = agent(obs)
        return surrogate(agent.log_prob(dist, actions), logp_old, advantages), kl_fn(*dist_old, *dist).mean()

    surr_old, kl = objectives()  # at θ_old: r_t = 1, KL̄ = 0, but their derivatives are what we need
    g = flat_grad(surr_old, params, retain_graph=True)  # g = ∇L(θ_old) = Ê[∇log π_θ(a_t|s_t) Â_t]
    Fvp = fisher_vector_product(kl, params, args.cg_damping)
    x, residual = conjugate_gradient(Fvp, g, args.cg_iters, args.cg_tol)  # natural-gradient direction x ≈ F⁻¹ g
    step_scale = torch.sqrt(2 * max_kl / (x @ Fvp(x)))  # s = √(2δ / xᵀFx) puts KL̄ ≈ ½ (sx)ᵀF(sx) at δ
    accepted, steps, surr, kl = line_search(params, step_scale * x, objectives, surr_old.detach(), max_kl,
                                            args.backtrack_coef, args.backtrack_iters)  # fmt: skip
    return {"kl": kl.item(), "surrogate_improvement": (surr - surr_old).item(), "line_search_steps": steps,
            "line_search_accepted": float(accepted), "cg_residual": residual.item(), "step_scale": step_scale.item()}


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
    """π_θ(a|s), softmax or a diagonal Gaussian with a free, state-independent log σ, and a separate critic V(s) with
    a linear output (values are unbounded): TRPO moves θ by a constrained step and V by regression, sharing nothing."""

    def __init__(self, obs_space, act_space, hidden: int, normalize: bool):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim, act_dim = obs_space.shape[0], act_space.n if self.discrete else act_space.shape[0]
        self.obs_rms = RunningMeanStd(obs_dim) if normalize else None
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)  # starts near uniform π, or μ ≈ 0
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32))

    def forward(self, obs):  # π_θ(·|s) as (logits,) or (μ, log σ), the form log_prob and kl take
        out = self.actor(obs)
        return (out,) if self.discrete else (out, self.log_std.expand_as(out))

    def log_prob(self, dist, actions):  # log π(a|s) = z_a − log Σ_b exp z_b, or log N(a; μ, σ²) summed over dims
        if self.discrete:
            return dist[0].log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        return (-0.5 * ((actions - dist[0]) / dist[1].exp()) ** 2 - dist[1] - 0.5 * np.log(2 * np.pi)).sum(-1)

    def sample(self, dist):  # a ~ π_θ(·|s); Gumbel-max argmax_a (z_a − log E_a), E_a ~ Exp(1), samples softmax(z)
        if self.discrete:  # ~2.5× faster than torch.multinomial on a small batch
            return (dist[0] - torch.empty_like(dist[0]).exponential_().log()).argmax(-1)
        return dist[0] + dist[1].exp() * torch.randn_like(dist[0])

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return obs if self.obs_rms is None else self.obs_rms(obs)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def env_action(self, action: torch.Tensor) -> np.ndarray:  # a Gaussian sample is clipped to the bounds
        return (action if self.discrete else action.clamp(self.low, self.high)).cpu().numpy()

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:  # for evaluation: argmax π, or the mean clipped to the bounds
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.critic[0].weight.device)
        out = self.actor(self.normalize(obs))
        return (out.argmax(-1) if self.discrete else out.clamp(self.low, self.high)).cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Agent:
    return Agent(obs_space, act_space, args.hidden, args.normalize)


# ── Training: collect a rollout with π_old → GAE → one trust-region step of π_θ → regression of V → log ──
class Rollout:  # T steps of N envs collected with π_old; every tensor is (T, N) unless noted
    def __init__(self, T: int, N: int, obs_space, act_space, device):
        self.obs = torch.zeros((T, N) + obs_space.shape, device=device)  # normalised s_t, (T, N, obs_dim)
        self.actions = torch.zeros((T, N) + act_space.shape, device=device)  # a_t, (T, N) or (T, N, act_dim)
        # r_t, term_t, done_t, and V(true last observation) where an episode was truncated at step t
        self.rewards, self.terminations, self.dones, self.trunc_values = torch.zeros((4, T, N), device=device)


@torch.inference_mode()
def collect_rollout(envs, agent: Agent, buf: Rollout, next_obs: torch.Tensor, reward_scale, run) -> torch.Tensor:
    """Fill `buf` with T steps of every env under a ~ π_old(·|s_t); returns s_T, where the next rollout starts.
    log π_old and V(s_t) come later, in one batched pass: θ and V do not change while collecting."""
    for t in range(buf.rewards.shape[0]):
        if agent.obs_rms is not None:
            agent.obs_rms.update(next_obs)
        buf.obs[t] = obs = agent.normalize(next_obs)
        buf.actions[t] = action = agent.sample(agent(obs))
        raw_obs, reward, terminated, truncated, info = envs.step(agent.env_action(action))
        run.step += envs.num_envs
        run.log_episodes(info)
        next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=buf.obs.device)
        buf.rewards[t] = reward_scale(torch.as_tensor(reward, device=buf.obs.device), terminated | truncated)
        buf.terminations[t], buf.dones[t] = torch.as_tensor(terminated), torch.as_tensor(terminated | truncated)
        if truncated.any():  # a time limit is not a terminal state: bootstrap from V(true last observation)
            idx = np.flatnonzero(truncated)
            final = torch.as_tensor(np.stack(info["final_obs"][idx]), dtype=torch.float32, device=buf.obs.device)
            buf.trunc_values[t, idx] = agent.value(agent.normalize(final))
    return next_obs


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    agent = make_agent(args, obs_space, act_space).to(device)
    # only V is trained by a gradient optimiser; fused=True: one kernel for all parameters, much faster on CPU
    optimizer = torch.optim.Adam(agent.critic.parameters(), lr=args.learning_rate, fused=True)
    reward_scale = RewardScale(args.num_envs, args.gamma, device) if args.normalize else lambda r, done: r
    buf = Rollout(args.num_steps, args.num_envs, obs_space, act_space, device)
    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32, device=device)
    with Run(args, agent) as run:
        for _ in range(num_iterations(args, args.num_steps * args.num_envs)):
            # ---- collect T steps from each of the N envs with π_old ----
            next_obs = collect_rollout(envs, agent, buf, next_obs, reward_scale, run)
            run.progress()

            # ---- advantages Â_t and critic targets R_t = Â_t + V(s_t), fixed during the update ----
            with torch.no_grad():
                values = agent.value(buf.obs)  # V(s_t), (T, N), in one batched pass
                next_values = torch.cat([values[1:], agent.value(agent.normalize(next_obs)).unsqueeze(0)])
                next_values = torch.where(buf.dones.bool(), buf.trunc_values, next_values)  # of the same episode
                advantages = compute_gae(buf.rewards, values, next_values, buf.terminations, buf.dones, args.gamma,
                                         args.gae_lambda)  # fmt: skip
            buf.trunc_values.zero_()
            obs, actions = buf.obs.flatten(0, 1), buf.actions.flatten(0, 1)
            critic_targets, values, advantages = (advantages + values).flatten(), values.flatten(), advantages.flatten()
            if args.norm_adv:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            # ---- one trust-region step of π_θ, then the regression Ê[(V(s_t) − R_t)²] → min on the fixed R_t ----
            stats = trpo_update(agent, obs, actions, advantages, args)
            for _ in range(args.vf_epochs):  # epochs of shuffled minibatches
                for mb in torch.randperm(len(obs), device=device).split(len(obs) // args.vf_minibatches):
                    v_loss = ((agent.value(obs[mb]) - critic_targets[mb]) ** 2).mean()
                    check_finite(value_loss=v_loss)
                    optimizer.zero_grad(set_to_none=True)
                    v_loss.backward()
                    optimizer.step()

            # ---- log ----
            stats["explained_variance"] = explained_variance(values, critic_targets)
            if not agent.discrete:  # σ of the Gaussian: no entropy term holds it, so watch it
                stats["std"] = agent.log_std.exp().mean().item()
            run.log({"losses/value_loss": v_loss.item(), **{f"diagnostics/{k}": v for k, v in stats.items()}})
        envs.close()
        return run.finish()


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, what cannot work."""
    batch = args.num_envs * args.num_steps
    check(
        check_spaces(args.env_id, obs_space, act_space, gym.spaces.Discrete, gym.spaces.Box),
        (min(args.num_envs, args.num_steps, args.cg_iters, args.backtrack_iters, args.vf_epochs, args.hidden) >= 1,
         "--num-envs, --num-steps, --cg-iters, --backtrack-iters, --vf-epochs and --hidden must be >= 1"),
        (2 <= batch <= args.total_timesteps and args.vf_minibatches >= 1 and batch % args.vf_minibatches == 0,
         f"num_envs*num_steps = {batch} must be >= 2, <= --total-timesteps, divisible by --vf-minibatches"),
        (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1, "--gamma and --gae-lambda must lie in [0, 1]"),
        (all(0 < x < math.inf for x in (args.target_kl, args.learning_rate)) and 0 < args.backtrack_coef < 1,
         "--target-kl and --learning-rate must be positive and finite, --backtrack-coef in (0, 1)"),
        (all(0 <= x < math.inf for x in (args.cg_damping, args.cg_tol)), "--cg-damping, --cg-tol must be in [0, inf)"),
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


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (Chan et al.'s parallel update); buffers, so they are
    saved in the state dict and evaluation sees the inputs that training saw."""

    def __init__(self, shape=()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, x: torch.Tensor):
        b_mean, b_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + n
        self.var.copy_((self.var * self.count + b_var * n + delta**2 * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor, clip: float = 10.0) -> torch.Tensor:
        return ((x - self.mean) / (self.var + 1e-8).sqrt()).clamp(-clip, clip).to(x.dtype)


class RewardScale:
    """r_t / std(discounted return), clipped to ±10: the scale of the return, not of r_t (as SB3 and CleanRL)."""

    def __init__(self, num_envs: int, gamma: float, device):
        self.gamma, self.rms = gamma, RunningMeanStd().to(device)
        self.discounted = torch.zeros(num_envs, dtype=torch.float64, device=device)  # per-env Σ γ^k r

    def __call__(self, reward: torch.Tensor, done: np.ndarray) -> torch.Tensor:
        self.discounted = self.discounted * self.gamma + reward
        self.rms.update(self.discounted)
        self.discounted[torch.as_tensor(done)] = 0.0
        return (reward / (self.rms.var + 1e-8).sqrt()).clamp(-10, 10)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R]: 1 for a perfect critic, 0 for one no better than a constant."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


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
