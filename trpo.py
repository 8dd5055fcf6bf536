"""TRPO with GAE(λ), for Discrete and Box action spaces.

Trust Region Policy Optimization (Schulman et al. 2015, arXiv:1502.05477). Each iteration collects T steps from N
parallel envs with π_old, estimates Â_t with GAE(λ) (arXiv:1506.02438), takes ONE policy step, as long as a trust
region on the KL divergence allows, then fits a separate critic V(s) to R_t = Â_t + V(s_t) by regression:

  maximise L(θ) = Ê[r_t(θ) Â_t],  r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t),  s.t. KL̄(θ) = Ê[KL(π_old‖π_θ)(s_t)] ≤ δ
  x = F⁻¹ g      g = ∇L(θ_old); F = ∇²KL̄(θ_old) = E[∇log π ∇log πᵀ], the Fisher; conjugate gradient, F·v alone
  θ = θ_old + α^j β x,  β = √(2δ / xᵀFx),  the first j = 0, 1, ... with KL̄ ≤ δ and L improved (else θ stays)

Importance sampling, E_p[f] = E_q[(p/q) f], lets π_old's samples score π_θ. Reweighting whole trajectories takes
Π_t r_t(θ), which explodes or vanishes over long horizons; L reweights each action alone, on π_old's states, and so
equals J(θ) − J(θ_old) only to first order: it is to be trusted near θ_old alone. Why a KL and not ‖θ − θ_old‖ ≤ ε?
How far π moves per unit of θ depends on the parametrisation: with a two-action softmax on the logit z = 100 θ,
π = (0.4, 0.6) at θ = −0.004 is (1.00, 0.00) at θ = 0.06. The KL bounds the change of the distribution itself,
whatever the parametrisation; the step it gives is the natural gradient (Kakade 2001), β where ½ β² xᵀFx = δ.

Discrete: softmax policy. Box: diagonal Gaussian with state-independent log σ, actions clipped to the bounds when
stepped, running observation and reward normalisation (saved with the model). Defaults: RL-Zoo's TRPO settings for
CartPole-v1 (Discrete) and for MuJoCo (Box).

Usage: python trpo.py --env-id CartPole-v1
       python trpo.py --env-id Hopper-v5 --seed 3
       python trpo.py --eval-model runs/<run>/trpo.pt
"""

import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
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
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name, part of the run directory's name
    seed: int = 1  # seed of random, numpy, torch and the environments
    torch_deterministic: bool = True  # set torch.backends.cudnn.deterministic
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto picks cuda, then mps, then cpu
    threads: int = 1  # torch CPU threads (1 is fastest for small networks on CPU); 0 keeps torch's default
    env_id: str = "CartPole-v1"  # gymnasium environment id
    total_timesteps: Optional[int] = None  # environment steps to train for (default: 100k Discrete, 1M Box)
    num_envs: int = 2  # N: parallel environments
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the model, its normalisation statistics and these Args to {run_dir}/{exp_name}.pt
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)

    # Algorithm
    num_steps: Optional[int] = None  # T: steps per env in each rollout (default: 512 Discrete, 1024 Box)
    gamma: float = 0.99  # γ: discount factor, typically 0.98-0.999
    gae_lambda: Optional[float] = None  # λ: GAE, 0 = one-step TD, 1 = Monte Carlo (default: 0.98 Discrete, 0.95 Box)
    target_kl: float = 0.01  # δ: trust-region radius, the largest mean KL(π_old‖π_θ) of one step; typically 0.001-0.05
    cg_iters: Optional[int] = None  # k: conjugate-gradient iterations for x ≈ F⁻¹g (default: 15 Discrete, 25 Box)
    cg_tol: float = 1e-5  # conjugate gradient stops once the residual ‖g − F x‖ is below this
    cg_damping: Optional[float] = None  # F + damping·I, a well-conditioned solve (default: 1e-3 Discrete, 0.1 Box)
    backtrack_coef: float = 0.8  # α: the line search tries the steps α^j β x, j = 0, 1, ...
    backtrack_iters: int = 10  # steps the line search tries before it rejects the update
    norm_adv: bool = True  # normalise Â_t to zero mean and unit std over each rollout
    learning_rate: float = 1e-3  # Adam step size of the value network
    vf_epochs: int = 20  # passes of value regression over each rollout
    vf_minibatches: Optional[int] = None  # minibatches per value epoch (default: 2 Discrete, 16 Box)
    normalize: Optional[bool] = None  # running observation and reward normalisation (default: off Discrete, on Box)
    hidden: int = 64  # width of the two hidden layers of the policy and of the value network


# Defaults that differ by action space, as (Discrete, Box); used where the user did not set the field.
SPACE_DEFAULTS = {
    "total_timesteps": (100_000, 1_000_000), "num_steps": (512, 1024), "gae_lambda": (0.98, 0.95),
    "cg_iters": (15, 25), "cg_damping": (1e-3, 0.1), "vf_minibatches": (2, 16), "normalize": (False, True),
}  # fmt: skip


def fail(msg: str):
    """Bad input: one line on stderr, exit code 2, nothing written."""
    print(f"error: {os.path.basename(__file__)}: {msg}", file=sys.stderr)
    sys.exit(2)


def env_spaces(env_id: str):
    """Observation and action space of env_id, or a one-line error if it cannot be made."""
    try:
        env = gym.make(env_id)
    except (gym.error.Error, ImportError) as e:
        fail(f"cannot make env '{env_id}': {e}")
    env.close()
    return env.observation_space, env.action_space


def setup(args: Args) -> torch.device:
    """Resolve the device once, set CPU threads and denormal flushing, seed random, numpy and torch."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available() or device == "mps" and not torch.backends.mps.is_available():
        fail(f"--device {device}, but torch sees no such device here; use --device cpu")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Adam's moments of dead ReLU units decay into denormal floats (< 1e-38), which x86 CPUs compute ~100× slower
    torch.set_flush_denormal(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    return torch.device(device)


def make_envs(env_id: str, num_envs: int, video_dir: Optional[str] = None) -> gym.vector.VectorEnv:
    """N copies of env_id stepped in this process, episode statistics in info["episode"].
    SAME_STEP autoreset: the step that ends an episode already returns the next episode's first observation,
    and the true last one is in info["final_obs"], so no transition pairs the end of one episode with the next."""

    def thunk(i: int):
        def make():
            if video_dir is None or i > 0:
                return gym.make(env_id)
            return gym.wrappers.RecordVideo(gym.make(env_id, render_mode="rgb_array"), video_dir, lambda _: True)

        return make

    same_step = gym.vector.AutoresetMode.SAME_STEP
    envs = gym.vector.SyncVectorEnv([thunk(i) for i in range(num_envs)], autoreset_mode=same_step)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def make_writer(args: Args):
    run_dir = os.path.join(args.log_dir, f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}")
    writer = SummaryWriter(run_dir)
    rows = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + rows, 0)
    return writer, run_dir


def show_progress(args: Args, step: int, start: float, recent_return: float):
    """One self-overwriting line on a terminal: steps, steps per second, recent return, ETA."""
    if args.progress and sys.stderr.isatty():
        sps = step / max(time.time() - start, 1e-9)
        eta = (args.total_timesteps - step) / max(sps, 1e-9)
        end = "\n" if step >= args.total_timesteps else ""
        print(f"\r{step:>10,}/{args.total_timesteps:,} steps {sps:7,.0f} SPS  return {recent_return:8.2f}  "
              f"ETA {eta:4.0f}s", end=end, file=sys.stderr)  # fmt: skip


def evaluate(act, env_id: str, episodes: int, seed: int, video_dir: Optional[str] = None) -> float:
    """Mean return of `episodes` episodes (one per env) of the deterministic policy act(obs) -> action."""
    envs = make_envs(env_id, episodes, video_dir)
    obs, _ = envs.reset(seed=seed)
    returns = np.full(episodes, np.nan)
    while np.isnan(returns).any():
        obs, _, _, _, info = envs.step(act(obs))
        if "episode" in info:
            first = info["_episode"] & np.isnan(returns)  # each env's first episode only
            returns[first] = info["episode"]["r"][first]
    envs.close()
    return float(returns.mean())


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain `std` and a constant bias, as in OpenAI baselines' PPO."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


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


def compute_gae(rewards, values, next_values, terminations, dones, gamma: float, gae_lambda: float):
    """GAE(λ) advantages Â_t of a rollout; every argument has shape (T, N). next_values[t] is V(s_{t+1}) of
    the same episode (V of the true last observation where the episode was truncated); terminations[t] = 1
    where s_{t+1} is terminal; dones[t] = 1 where the episode ended at step t (terminated or truncated)."""
    # δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)
    deltas = rewards + gamma * (1.0 - terminations) * next_values - values
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # Â_t = δ_t + γλ (1 − done_t) Â_{t+1}, i.e. Σ_l (γλ)^l δ_{t+l} up to the end of the episode
        next_adv = deltas[t] + gamma * gae_lambda * (1.0 - dones[t]) * next_adv
        advantages[t] = next_adv
    return advantages


# Log-probabilities and KL divergences in closed form: the numbers torch.distributions gives, without building a
# distribution object for every step (a large share of a small network's step time).
def categorical_logp(logits, actions):
    # log π(a|s) = z_a − log Σ_b exp z_b
    return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def gaussian_logp(mean, log_std, actions):
    # log N(a; μ, σ²), summed over the independent action dimensions
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def categorical_kl(logits_old, logits):
    # KL(π_old‖π_θ) = Σ_a π_old(a) (log π_old(a) − log π_θ(a))
    logp_old = logits_old.log_softmax(-1)
    return (logp_old.exp() * (logp_old - logits.log_softmax(-1))).sum(-1)


def gaussian_kl(mean_old, log_std_old, mean, log_std):
    # KL(N(μ_0, σ_0²) ‖ N(μ, σ²)) = Σ_i [log σ/σ_0 + (σ_0² + (μ_0 − μ)²) / (2σ²) − ½], the sum over the action
    # dimensions: the KL of the joint policy that δ bounds (sb3-contrib's TRPO takes their mean, a δ |A| times looser)
    var_old, var = (2 * log_std_old).exp(), (2 * log_std).exp()
    return (log_std - log_std_old + (var_old + (mean_old - mean) ** 2) / (2 * var) - 0.5).sum(-1)


def mlp(n_in: int, n_out: int, hidden: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_in, hidden)), nn.Tanh(), layer_init(nn.Linear(hidden, hidden)),
                         nn.Tanh(), layer_init(nn.Linear(hidden, n_out), std=out_std))  # fmt: skip


class Policy(nn.Module):
    """π_θ(a|s): softmax over logits (Discrete), or a diagonal Gaussian with a free, state-independent log σ (Box).
    forward returns the distribution's parameters, (logits,) or (μ, log σ), which log_prob and kl take explicitly;
    its parameters are θ, the vector the natural-gradient step moves."""

    def __init__(self, obs_dim: int, act_space, hidden: int):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        act_dim = act_space.n if self.discrete else act_space.shape[0]
        self.net = mlp(obs_dim, act_dim, hidden, out_std=0.01)  # starts near uniform π, or μ ≈ 0
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs):
        out = self.net(obs)
        return (out,) if self.discrete else (out, self.log_std.expand_as(out))

    def log_prob(self, dist, actions):
        return categorical_logp(*dist, actions) if self.discrete else gaussian_logp(*dist, actions)

    def kl(self, dist_old, dist):
        return categorical_kl(*dist_old, *dist) if self.discrete else gaussian_kl(*dist_old, *dist)

    def sample(self, dist):
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample of softmax(z)
            return (dist[0] - torch.empty_like(dist[0]).exponential_().log()).argmax(-1)
        mean, log_std = dist
        return mean + log_std.exp() * torch.randn_like(mean)


class Agent(nn.Module):
    """The policy π_θ and a separate value network V(s) with a linear output (values are unbounded); TRPO moves
    θ by a constrained step, V by ordinary regression, so they share nothing."""

    def __init__(self, obs_space, act_space, hidden: int, normalize: bool):
        super().__init__()
        obs_dim = obs_space.shape[0]
        self.obs_rms = RunningMeanStd(obs_dim) if normalize else None
        self.policy = Policy(obs_dim, act_space, hidden)
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        if not self.policy.discrete:
            self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return obs if self.obs_rms is None else self.obs_rms(obs)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped to the bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.critic[0].weight.device)
        out = self.policy(self.normalize(obs))[0]
        return (out.argmax(-1) if self.policy.discrete else out.clamp(self.low, self.high)).cpu().numpy()


def surrogate(logp, logp_old, advantages):
    """L(θ) = Ê[r_t(θ) Â_t]: the importance-sampled objective; the ratio is against π_old because π_old drew a_t."""
    return ((logp - logp_old).exp() * advantages).mean()  # r_t(θ) in log space for stability


def flat_grad(y, params, **kwargs) -> torch.Tensor:
    """∇_θ y as one flat vector, in the order of parameters_to_vector(params)."""
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(y, params, **kwargs)])


def fisher_vector_product(kl, params, damping: float):
    """v ↦ (F + damping·I) v, with F = ∇²KL̄ the Hessian of the mean KL at θ_old, where it equals the Fisher
    matrix E[∇log π ∇log πᵀ] (the gradient of KL̄ vanishes there). kl is KL̄ computed at θ_old, with its graph;
    F (n² numbers) is never formed: each product is one more backward pass."""
    # create_graph=True makes ∇KL̄ itself differentiable: ∇_θ (∇KL̄ · v) = (∇²KL̄) v for a constant v
    grad_kl = flat_grad(kl, params, create_graph=True)
    return lambda v: flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v


def conjugate_gradient(Avp, b, iters: int, tol: float):
    """x ≈ A⁻¹ b for a symmetric positive-definite A given only as v ↦ Av, in at most `iters` steps (exact after
    n in exact arithmetic); stops once the residual ‖b − Ax‖ < tol. Returns x and that residual norm."""
    x, r = torch.zeros_like(b), b.clone()  # r = b − A x, with x = 0
    p, rr = r.clone(), r @ r  # p: search direction, A-conjugate to all earlier ones
    for _ in range(iters):
        if rr.sqrt() < tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)  # exact minimiser of ½xᵀAx − bᵀx along p
        x, r = x + alpha * p, r - alpha * Ap
        rr_new = r @ r
        p, rr = r + (rr_new / rr) * p, rr_new  # the next direction: the residual, made A-conjugate to p
    return x, rr.sqrt()


def surrogate_and_kl(policy: Policy, obs, actions, advantages, dist_old, logp_old):
    """L(θ) and KL̄(θ) = Ê[KL(π_old‖π_θ)] at the policy's current θ, from one forward pass over the batch."""
    dist = policy(obs)
    return surrogate(policy.log_prob(dist, actions), logp_old, advantages), policy.kl(dist_old, dist).mean()


def line_search(params, full_step, objectives, surrogate_old, max_kl: float, backtrack_coef: float, iters: int):
    """Backtracking: try θ = θ_old + α^j · full_step for j = 0, 1, ..., keep the first with KL̄(θ) ≤ δ and
    L(θ) > L(θ_old). The quadratic model behind the step can be wrong far from θ_old; if no step qualifies,
    θ stays θ_old. objectives() gives (L(θ), KL̄(θ)) at the current θ. Returns (accepted, steps tried, L, KL̄)."""
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        for j in range(iters):
            vector_to_parameters(theta_old + backtrack_coef**j * full_step, params)
            surr, kl = objectives()
            if kl <= max_kl and surr > surrogate_old:
                return True, j + 1, surr, kl
        vector_to_parameters(theta_old, params)
    return False, iters, surrogate_old, torch.zeros(())


def trpo_update(policy: Policy, obs, actions, advantages, max_kl: float, damping: float, cg_iters: int,
                cg_tol: float, backtrack_coef: float, backtrack_iters: int) -> dict:  # fmt: skip
    """One natural-gradient step of π_θ on a fixed batch, inside the trust region KL̄ ≤ δ; returns diagnostics."""
    params = list(policy.parameters())
    with torch.no_grad():  # π_old: θ has not moved since it collected the batch
        dist_old = policy(obs)
        logp_old = policy.log_prob(dist_old, actions)
    objectives = partial(surrogate_and_kl, policy, obs, actions, advantages, dist_old, logp_old)
    surr_old, kl = objectives()  # at θ_old: r_t = 1, KL̄ = 0, but their derivatives are what we need
    g = flat_grad(surr_old, params, retain_graph=True)  # g = ∇L(θ_old) = Ê[∇log π_θ(a_t|s_t) Â_t]
    Fvp = fisher_vector_product(kl, params, damping)
    x, residual = conjugate_gradient(Fvp, g, cg_iters, cg_tol)  # natural-gradient direction x ≈ F⁻¹ g
    # the quadratic model ½ (βx)ᵀ F (βx) of KL̄ reaches δ at β = √(2δ / xᵀFx) (F with its damping, as in the solve)
    beta = torch.sqrt(2 * max_kl / (x @ Fvp(x)))
    accepted, steps, surr, kl = line_search(params, beta * x, objectives, surr_old.detach(), max_kl, backtrack_coef,
                                            backtrack_iters)  # fmt: skip
    return {"kl": kl.item(), "surrogate_improvement": (surr - surr_old).item(), "line_search_steps": steps,
            "line_search_accepted": float(accepted), "cg_residual": residual.item(),
            "step_size": beta.item()}  # fmt: skip


def fit_value(critic: nn.Module, optimizer, obs, returns, epochs: int, minibatches: int) -> float:
    """`epochs` passes of Adam over shuffled minibatches of the regression Ê[(V(s_t) − R_t)²] → min; returns
    the last minibatch's loss. R_t are fixed targets computed before the update."""
    for _ in range(epochs):
        for mb in torch.randperm(len(obs), device=obs.device).split(len(obs) // minibatches):
            loss = ((critic(obs[mb]).squeeze(-1) - returns[mb]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return loss.item()


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R]: 1 for a perfect critic, 0 for one no better than a constant."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


def check_args(args: Args, obs_space, act_space):
    """Fill in the action-space defaults, then refuse what cannot work, in one line."""
    if not isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box)):
        fail(f"needs a Discrete or Box action space; {args.env_id} has {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"needs flat Box observations; {args.env_id} has {obs_space}")
    for name, pair in SPACE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, pair[isinstance(act_space, gym.spaces.Box)])
    batch = args.num_envs * args.num_steps
    for ok, msg in [
        (min(args.num_envs, args.num_steps, args.cg_iters, args.backtrack_iters, args.vf_epochs) >= 1,
         "--num-envs, --num-steps, --cg-iters, --backtrack-iters and --vf-epochs must be >= 1"),
        (batch >= 2 and args.vf_minibatches >= 1 and batch % args.vf_minibatches == 0,
         f"num_envs*num_steps = {batch} must be >= 2 and divisible by --vf-minibatches {args.vf_minibatches}"),
        (args.total_timesteps >= batch, f"--total-timesteps {args.total_timesteps} is less than one rollout "
                                        f"(num_envs*num_steps = {batch})"),
        (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1, "--gamma and --gae-lambda must lie in [0, 1]"),
        (args.target_kl > 0 and args.learning_rate > 0, "--target-kl and --learning-rate must be positive"),
        (args.cg_damping >= 0 and args.cg_tol >= 0, "--cg-damping and --cg-tol must be >= 0"),
        (0 < args.backtrack_coef < 1, "--backtrack-coef must lie in (0, 1)"),
        (args.eval_episodes >= 0, "--eval-episodes must be >= 0"),
    ]:  # fmt: skip
        if not ok:
            fail(msg)


def train(args: Args) -> dict:
    obs_space, act_space = env_spaces(args.env_id)
    check_args(args, obs_space, act_space)
    device = setup(args)
    writer, run_dir = make_writer(args)
    envs = make_envs(args.env_id, args.num_envs)
    envs.action_space.seed(args.seed)
    agent = Agent(obs_space, act_space, args.hidden, args.normalize).to(device)
    # only V is trained by a gradient optimiser; fused=True: one kernel for all parameters, much faster on CPU
    optimizer = torch.optim.Adam(agent.critic.parameters(), lr=args.learning_rate, fused=True)
    ret_rms = RunningMeanStd() if args.normalize else None  # on the host, with the rewards; not part of the model
    discounted = np.zeros(args.num_envs)  # per-env discounted return, for the reward scale

    T, N = args.num_steps, args.num_envs
    num_iterations = args.total_timesteps // (T * N)
    obs_buf = torch.zeros((T, N) + obs_space.shape, device=device)  # normalised s_t, (T, N, obs_dim)
    act_buf = torch.zeros((T, N) + act_space.shape, device=device)  # a_t, (T, N) or (T, N, act_dim)
    trunc_val_buf = torch.zeros((T, N), device=device)  # V(true last observation) where truncated at step t
    # r_t, term_t, done_t stay on the host until the rollout ends: one copy to the device instead of 3T small ones
    host_buf = np.zeros((3, T, N), dtype=np.float32)

    global_step, start, recent_return = 0, time.time(), float("nan")
    raw_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
    for iteration in range(1, num_iterations + 1):
        # ---- collect T steps from each of the N envs with π_old (log π_old and V come after, in one batch) ----
        for t in range(T):
            global_step += N
            with torch.inference_mode():
                if agent.obs_rms is not None:
                    agent.obs_rms.update(next_obs)
                obs = agent.normalize(next_obs)
                action = agent.policy.sample(agent.policy(obs))
                obs_buf[t], act_buf[t] = obs, action
            env_action = action.cpu().numpy()
            if not agent.policy.discrete:  # the env gets a legal action; π keeps the sampled one for log π(a|s)
                env_action = np.clip(env_action, act_space.low, act_space.high)
            raw_obs, reward, terminated, truncated, info = envs.step(env_action)
            next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
            done = terminated | truncated
            if ret_rms is not None:  # scale r_t by the std of the discounted return, not of r_t (as SB3, CleanRL)
                discounted = discounted * args.gamma + reward
                ret_rms.update(torch.from_numpy(discounted))
                reward = np.clip(reward / np.sqrt(ret_rms.var.item() + 1e-8), -10, 10)
                discounted[done] = 0.0
            host_buf[:, t] = reward, terminated, done
            if truncated.any():  # a time limit is not a terminal state: bootstrap from V(true last observation)
                idx = np.flatnonzero(truncated)
                final = torch.as_tensor(np.stack(info["final_obs"][idx]), dtype=torch.float32, device=device)
                with torch.inference_mode():
                    trunc_val_buf[t, idx] = agent.value(agent.normalize(final))
            if "episode" in info:
                recent_return = float(info["episode"]["r"][info["_episode"]].mean())
                writer.add_scalar("charts/episodic_return", recent_return, global_step)
                length = float(info["episode"]["l"][info["_episode"]].mean())
                writer.add_scalar("charts/episodic_length", length, global_step)
        show_progress(args, global_step, start, recent_return)

        # ---- advantages Â_t and critic targets R_t, fixed during the update ----
        rew_buf, term_buf, done_buf = torch.as_tensor(host_buf, device=device)  # each (T, N)
        with torch.no_grad():
            values = agent.value(obs_buf)  # V(s_t), (T, N): one batched pass, since V did not change while collecting
            next_vals = torch.cat([values[1:], agent.value(agent.normalize(next_obs)).unsqueeze(0)])
            next_vals = torch.where(done_buf.bool(), trunc_val_buf, next_vals)  # V(s_{t+1}) of the same episode
            advantages = compute_gae(rew_buf, values, next_vals, term_buf, done_buf, args.gamma, args.gae_lambda)
            returns = advantages + values
        trunc_val_buf.zero_()
        b_obs, b_act = obs_buf.flatten(0, 1), act_buf.flatten(0, 1)
        b_adv, b_ret, b_val = advantages.flatten(), returns.flatten(), values.flatten()
        if args.norm_adv:
            b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)

        # ---- one trust-region step of π_θ, then the regression of V ----
        stats = trpo_update(agent.policy, b_obs, b_act, b_adv, args.target_kl, args.cg_damping, args.cg_iters,
                            args.cg_tol, args.backtrack_coef, args.backtrack_iters)  # fmt: skip
        v_loss = fit_value(agent.critic, optimizer, b_obs, b_ret, args.vf_epochs, args.vf_minibatches)
        stats |= {"explained_variance": explained_variance(b_val, b_ret)}
        if not agent.policy.discrete:  # σ of the Gaussian: no entropy term holds it, so watch it
            stats["std"] = agent.policy.log_std.exp().mean().item()
        writer.add_scalar("losses/value_loss", v_loss, global_step)
        for name, value in stats.items():
            writer.add_scalar(f"diagnostics/{name}", value, global_step)
        writer.add_scalar("charts/SPS", global_step / (time.time() - start), global_step)
    envs.close()
    result = {"run_dir": run_dir, "steps": global_step, "sps": global_step / (time.time() - start)}
    return finish(args, agent, writer, run_dir, result)


def finish(args: Args, agent: nn.Module, writer: SummaryWriter, run_dir: str, result: dict) -> dict:
    """Save the model (--save-model), evaluate it (--eval-episodes), log eval/episodic_return, close the writer."""
    result["model_path"] = None
    if args.save_model:
        result["model_path"] = os.path.join(run_dir, f"{args.exp_name}.pt")
        torch.save({"args": asdict(args), "model": agent.state_dict()}, result["model_path"])
    result["eval_return"] = float("nan")
    if args.eval_episodes > 0:
        video_dir = os.path.join(run_dir, "videos") if args.capture_video else None
        result["eval_return"] = evaluate(agent.act, args.env_id, args.eval_episodes, args.seed + 10_000, video_dir)
        writer.add_scalar("eval/episodic_return", result["eval_return"], result["steps"])
        print(f"eval/episodic_return {result['eval_return']:.2f} over {args.eval_episodes} deterministic episodes")
    writer.close()
    return result


def evaluate_saved(args: Args) -> float:
    """Evaluate a file written by --save-model for args.eval_episodes deterministic episodes, without training."""
    try:
        ckpt = torch.load(args.eval_model, map_location="cpu")
    except (OSError, RuntimeError, KeyError) as e:
        fail(f"cannot load --eval-model {args.eval_model}: {e}")
    saved = Args(**ckpt["args"])
    agent = Agent(*env_spaces(saved.env_id), saved.hidden, saved.normalize)
    agent.load_state_dict(ckpt["model"])
    video_dir = os.path.join(os.path.dirname(args.eval_model), "videos") if args.capture_video else None
    eval_return = evaluate(agent.act, saved.env_id, args.eval_episodes, args.seed + 10_000, video_dir)
    print(f"eval/episodic_return {eval_return:.2f} over {args.eval_episodes} deterministic episodes")
    return eval_return


if __name__ == "__main__":
    cli_args = tyro.cli(Args)
    evaluate_saved(cli_args) if cli_args.eval_model else train(cli_args)
