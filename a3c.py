"""A3C: asynchronous advantage actor-critic, and asynchronous one-step Q-learning.

Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning" (ICML,
arXiv:1602.01783). N worker processes each step their own env with a local copy θ_k of
the shared parameters θ, compute gradients on θ_k and apply them to θ in shared memory
without a lock (Hogwild!, Recht et al. 2011), through one shared RMSProp. Workers in
different parts of their envs decorrelate the updates, on CPU cores and without replay.
Each worker here steps E envs side by side (--envs-per-worker), so an update averages
E·n steps of E episodes. The paper's worker has one env: with E = 1 and 2 workers, the
updates of θ come from two trajectories only, and CartPole runs climbed to 500 and fell
back (benchmarks/results/seeds/a3c-variants.md). E = 8 and the paper's n = 5 give each
update a2c.py's batch, while the workers stay asynchronous.

  R_t = r_t + γ R_{t+1}, from R_n = V(s_n) at the rollout's end, 0 after a termination,
        V(true last observation) after a truncation          n-step return (λ = 1)
  Â_t = R_t − V(s_t)         the advantage; --gae-lambda < 1 gives GAE(λ) (a2c.py's)
  loss_k = −Ê[log π_θk(a_t|s_t) Â_t] + c_v Ê[(V_θk(s_t) − R_t)²] − c_e Ê[H(π_θk)]
  v ← αv + (1 − α) g²,  θ ← θ − η g / (√v + ε),  g = ∇_θk loss_k   shared RMSProp
--method q (Igel's Algorithm 5): a ε-greedy in Q_θk, y = r + γ(1 − term) max_a'
  Q_θ⁻(s', a'); the gradients of (y − Q_θk(s, a))² over T_update steps make one update
  of θ, and θ⁻ ← θ every C global steps. Discrete actions only; --method ac also
  handles Box (a diagonal Gaussian with state-independent log σ, as a2c.py).

With --num-workers 1 a seed gives the same run twice. With more, the OS schedules the
workers: which θ each copies, the order in which their gradients land on θ, and which
worker's step the global counter T gives which number differ from run to run.

Usage: python a3c.py --env-id CartPole-v1
       python a3c.py --method q
       python a3c.py --eval-model runs/<run>/a3c.pt
"""

import contextlib
import importlib
import io
import math
import os
import queue
import random
import signal
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional

if __name__ == "__main__":  # Ctrl-C while the libraries below load: exit quietly
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

import gymnasium as gym
import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    method: Literal["ac", "q"] = "ac"
    """ac: advantage actor-critic (A3C); q: one-step Q-learning (Igel's Algorithm 5)"""
    num_workers: int = 2
    """N: worker processes, each with its own envs and θ_k; typically 1-16 (cores)"""
    envs_per_worker: int = 8
    """E: envs each worker steps side by side; an update averages E·n steps (paper 1)"""
    num_steps: int = 5
    """n: steps of a worker's rollout, n of the n-step return (ac); typically 5-32"""
    learning_rate: float = 5e-4
    """η: step size of the shared RMSProp; typically 1e-4-1e-3"""
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """shared RMSProp (decay 0.99, ε 1e-5) as the paper, or shared Adam (ε 1e-5)"""
    anneal_lr: bool = False
    """decay η linearly to 0, as the paper (on or off: ~70 % of seeds solve CartPole)"""
    gamma: float = 0.99
    """γ: discount factor; typically 0.95-0.999"""
    gae_lambda: float = 1.0
    """λ: GAE, 1 = the paper's n-step returns, 0 = one-step TD (ac); typically 0.9-1"""
    ent_coef: float = 0.0
    """c_e: entropy bonus coefficient (ac); typically 0-0.01 (the paper: 0.01)"""
    vf_coef: float = 0.5
    """c_v: value loss coefficient (ac); typically 0.25-1"""
    max_grad_norm: float = 0.5
    """clip the norm of each worker's gradient to this; typically 0.5-40"""
    hidden: int = 64
    """width of the two hidden layers of each network; typically 64-256"""
    update_every: int = 5
    """T_update: steps whose gradients one update of θ sums (q); typically 1-32"""
    target_period: int = 1_000
    """C: global steps between copies θ⁻ ← θ of the target network (q)"""
    start_e: float = 1.0
    """ε at step 0 (q)"""
    end_e: float = 0.05
    """ε after the decay (q); typically 0.01-0.1"""
    exploration_fraction: float = 0.2
    """fraction of total_timesteps in which ε decays linearly (q); typically 0.1-0.5"""

    # The run
    env_id: str = "CartPole-v1"
    """gymnasium environment id"""
    total_timesteps: int = 200_000
    """environment steps of all workers together (each ends the rollout it is in)"""
    seed: int = 1
    """seed of random, numpy, torch and the environments"""
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """experiment name, part of the run folder's name"""
    torch_deterministic: bool = True
    """set torch.backends.cudnn.deterministic"""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto picks cuda, then mps, then cpu"""
    threads: int = 1
    """torch CPU threads of each process (1: a worker per core); 0: torch's default"""
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
    """Refuse, in one line, the settings A3C cannot work with."""
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations; {args.env_id} has {obs_space}")
    discrete_or_box = isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box))
    spaces_msg = f"needs a Discrete or Box action space; {args.env_id} has {act_space}"
    check(discrete_or_box, spaces_msg)
    q_ok = args.method == "ac" or isinstance(act_space, gym.spaces.Discrete)
    check(
        q_ok, f"--method q needs a Discrete action space; {args.env_id} has {act_space}"
    )
    workers = args.num_workers
    check(1 <= workers <= 256, f"--num-workers {workers} must lie in [1, 256]")
    E = args.envs_per_worker
    check(1 <= E <= 256, f"--envs-per-worker {E} must lie in [1, 256]")
    check(args.num_steps >= 1, f"--num-steps {args.num_steps} must be >= 1")
    check(args.update_every >= 1, f"--update-every {args.update_every} must be >= 1")
    period = args.target_period
    check(period >= 1, f"--target-period {period} must be >= 1")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    check(0 <= args.gamma <= 1, f"--gamma {args.gamma} must be in [0, 1]")
    lam = args.gae_lambda
    check(0 <= lam <= 1, f"--gae-lambda {lam} must be in [0, 1]")
    lr = args.learning_rate
    check(math.isfinite(lr) and lr > 0, f"--learning-rate {lr} must be finite and > 0")
    max_norm = args.max_grad_norm
    finite_positive = math.isfinite(max_norm) and max_norm > 0
    check(finite_positive, f"--max-grad-norm {max_norm} must be finite and > 0")
    c_e = args.ent_coef
    check(math.isfinite(c_e) and c_e >= 0, f"--ent-coef {c_e} must be finite and >= 0")
    c_v = args.vf_coef
    check(math.isfinite(c_v) and c_v >= 0, f"--vf-coef {c_v} must be finite and >= 0")
    check(0 <= args.start_e <= 1, f"--start-e {args.start_e} must lie in [0, 1]")
    end_e_ok = 0 <= args.end_e <= args.start_e
    check(end_e_ok, f"--end-e {args.end_e} must lie in [0, --start-e {args.start_e}]")
    fraction = args.exploration_fraction
    check(0 < fraction <= 1, f"--exploration-fraction {fraction} must lie in (0, 1]")


# ── The estimators and losses: the n-step advantage (ac), the Q-learning target (q) ──
# compute_gae is the copy shared with a2c.py, ppo.py and trpo.py: its T is the n of a
# worker's rollout, its N the worker's E envs.
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


@torch.no_grad()
def estimate(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
    """Advantages Â_t and critic targets R_t of one worker's rollout, (n, 1) each, from
    a2c.py's estimator. No gradient: the critic regresses on R_t, it does not move it.
    With λ = 1, R_t is the paper's n-step return, computed backwards R ← r_t + γR from
    V(s_n); compute_gae's arguments say how a termination and a truncation cut it."""
    advantages = compute_gae(
        rewards, values, next_values, terminations, dones, gamma, gae_lambda
    )
    # R_t = Â_t + V(s_t)
    critic_targets = advantages + values
    return advantages, critic_targets


def policy_loss(logp, advantages):
    """−Ê[log π_θ(a_t|s_t) Â_t]: minimising it ascends J. Â_t carries no gradient (it
    is computed from a detached V), so the gradient is Ê[∇ log π_θ(a_t|s_t) Â_t], the
    policy gradient with V(s_t) as baseline."""
    return -(logp * advantages).mean()


def value_loss(values, critic_targets):
    """Ê[(V_θ(s_t) − R_t)²]: regression of the critic on the fixed targets R_t."""
    return ((values - critic_targets) ** 2).mean()


# Log-probabilities and entropies in closed form, as a2c.py.
def categorical_logp(logits, actions):
    """log π(a|s) = z_a − log Σ_b exp z_b"""
    logp_all = logits.log_softmax(-1)
    return logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits):
    """H = −Σ_a π(a|s) log π(a|s)"""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def gaussian_logp(mean, log_std, actions):
    """log N(a; μ, σ²), summed over the independent action dimensions"""
    z = (actions - mean) / log_std.exp()
    return (-0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def gaussian_entropy(log_std):
    """H = Σ_i (½ log(2πe) + log σ_i)"""
    return (0.5 + 0.5 * np.log(2 * np.pi) + log_std).sum(-1)


def td_target(rewards, terminations, next_q_target, gamma):
    """y for a worker's T·E steps, from next_q_target = Q_θ⁻(s', ·), (T·E, |A|),
    computed without gradient: y is a fixed regression target, not something to move.
    Igel's Algorithm 5 writes max_a Q̂_target(s, a) on its line 3; s' is meant."""
    # y = r + γ (1 − term) max_a' Q_θ⁻(s', a'): a terminal s' has value 0; a truncated
    # episode's s' is its true last observation, and bootstraps
    return rewards + gamma * (1.0 - terminations) * next_q_target.max(1).values


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


# ── Networks, the shared optimizer, environments ──
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
    """a2c.py's separate actor and critic MLPs, without observation normalisation (its
    running statistics would be one more thing for the workers to share): the actor
    outputs softmax logits, or the Gaussian mean with a free log σ; the critic V(s)
    has a linear output."""

    def __init__(self, obs_space, act_space, hidden: int):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim = obs_space.shape[0]
        if self.discrete:
            act_dim = act_space.n
        else:
            act_dim = act_space.shape[0]
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        # out_std 0.01: π starts near uniform, or μ ≈ 0
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            low = torch.as_tensor(act_space.low, dtype=torch.float32)
            high = torch.as_tensor(act_space.high, dtype=torch.float32)
            self.register_buffer("low", low)
            self.register_buffer("high", high)

    def value(self, obs):
        """V(s)"""
        return self.critic(obs).squeeze(-1)

    def logp_entropy(self, obs, actions):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch."""
        out = self.actor(obs)
        if self.discrete:
            return categorical_logp(out, actions), categorical_entropy(out)
        log_std = self.log_std.expand_as(out)
        return gaussian_logp(out, log_std, actions), gaussian_entropy(log_std)

    def sample(self, obs):
        """a ~ π_θ(·|s) (the Gumbel-max trick for a softmax, as a2c.py)."""
        out = self.actor(obs)
        if self.discrete:
            return (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

    @torch.inference_mode()
    def explore(self, raw_obs: np.ndarray):
        """a ~ π_θ(·|s) for a worker's step: the action as sampled (log π keeps it), and
        as the env is given it (a Gaussian sample clipped to the bounds)."""
        device = self.critic[0].weight.device
        action = self.sample(
            torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
        )
        env_action = action
        if not self.discrete:
            env_action = action.clamp(self.low, self.high)
        return action.cpu().numpy(), env_action.cpu().numpy()

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped
        to the bounds."""
        device = self.critic[0].weight.device
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
        out = self.actor(obs)
        if self.discrete:
            action = out.argmax(-1)
        else:
            action = out.clamp(self.low, self.high)
        return action.cpu().numpy()


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


def make_agent(args: Args, obs_space, act_space) -> nn.Module:
    """Actor and critic (--method ac), or a Q-network (--method q)."""
    if args.method == "q":
        return QNetwork(obs_space.shape[0], act_space.n, args.hidden)
    return Agent(obs_space, act_space, args.hidden)


class SharedRMSprop(torch.optim.Optimizer):
    """RMSProp with one set of statistics v for all workers, in shared memory: the
    paper's choice ("shared RMSProp", more robust in its comparison than a set per
    worker or momentum SGD), and a2c.py's default, so that the two scripts differ in
    synchrony only. The update is torch.optim.RMSprop's, ε outside the root; the paper
    writes θ ← θ − η g / √(v + ε). torch's optimizers create their state at the first
    step, in whichever process takes it; this one creates v here, in the main process,
    before the workers start, and every worker's step updates it in place without a
    lock, as θ (Adam's moments could be shared the same way)."""

    def __init__(self, params, lr: float, alpha: float = 0.99, eps: float = 1e-5):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps))
        for group in self.param_groups:
            for p in group["params"]:
                # v: the running mean of g², shaped as θ, (shared)
                self.state[p]["square_avg"] = torch.zeros_like(p).share_memory_()

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            v = [self.state[p]["square_avg"] for p in params]
            # v ← αv + (1 − α) g², every tensor at once (_foreach: one call for all)
            torch._foreach_mul_(v, group["alpha"])
            torch._foreach_addcmul_(v, grads, grads, value=1 - group["alpha"])
            # θ ← θ − η g / (√v + ε)
            denominators = torch._foreach_add(torch._foreach_sqrt(v), group["eps"])
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])


class SharedAdam(torch.optim.Optimizer):
    """Adam with its moments m, v and its step count t in shared memory, made here
    before the workers start, as SharedRMSprop's v: the m of all workers' gradients
    averages over the last ~1/(1 − β₁) updates of every worker."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-5):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                # t, and m, v: the running means of g and g² (shared)
                state["step"] = torch.zeros((), device=p.device).share_memory_()
                state["exp_avg"] = torch.zeros_like(p).share_memory_()
                state["exp_avg_sq"] = torch.zeros_like(p).share_memory_()

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                t = float(state["step"])
                m = state["exp_avg"]
                v = state["exp_avg_sq"]
                # m ← β₁m + (1 − β₁) g,  v ← β₂v + (1 − β₂) g²
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                # θ ← θ − η m̂ / (√v̂ + ε), m̂ = m / (1 − β₁^t), v̂ = v / (1 − β₂^t)
                denominator = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
                p.addcdiv_(m, denominator, value=-group["lr"] / (1 - beta1**t))


def make_optimizer(args: Args, model: nn.Module) -> torch.optim.Optimizer:
    """The shared optimizer of θ, its statistics in shared memory."""
    if args.optimizer == "adam":
        return SharedAdam(model.parameters(), lr=args.learning_rate)
    return SharedRMSprop(model.parameters(), lr=args.learning_rate)


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


def final_observations(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """s_{t+1} of each env's transition. Under SAME_STEP autoreset an env whose episode
    just ended already returns the next episode's first observation; its true last
    observation is in info["final_obs"]."""
    real_next_obs = next_obs.copy()
    if "final_obs" in info:
        ended = info["_final_obs"]
        real_next_obs[ended] = np.stack(info["final_obs"][ended])
    return real_next_obs


# ── A worker: copy θ → collect n steps → gradients on θ_k → apply them to θ ──
class Rollout:
    """n steps of N envs, kept as numpy (the env's own type): little tensor work per
    step. Every array is (n, N) unless noted."""

    def __init__(self, n: int, N: int, obs_space, act_space, device):
        # raw s_t, (n, N, obs_dim)
        self.obs = np.zeros((n, N) + obs_space.shape, dtype=np.float32)
        # raw s_{t+1} of the same episode (the true last one where it ended)
        self.next_obs = np.zeros_like(self.obs)
        # a_t as sampled, (n, N) or (n, N, act_dim)
        self.actions = np.zeros((n, N) + act_space.shape, dtype=np.float32)
        # r_t
        self.rewards = np.zeros((n, N), dtype=np.float32)
        # term_t = 1 where s_{t+1} is terminal
        self.terminations = np.zeros((n, N), dtype=np.float32)
        # done_t = 1 where the episode ended at step t (terminated or truncated)
        self.dones = np.zeros((n, N), dtype=np.float32)
        self.device = device


class Shared:
    """What the processes share besides the tensors: the global step counter T (env
    steps of all workers), the events that start and stop the workers, and the queue
    that carries their reports (kind, T, payload) to the main process."""

    def __init__(self, ctx):
        self.counter = ctx.Value("q", 0)
        self.go = ctx.Event()
        self.stop = ctx.Event()
        self.queue = ctx.Queue()
        self.parent = os.getpid()

    def count(self, steps: int) -> int:
        """T ← T + steps under the lock of the counter (+= reads, then writes)."""
        with self.counter.get_lock():
            self.counter.value += steps
            return self.counter.value

    def orphaned(self) -> bool:
        """The main process died without stopping this worker, which then exits."""
        return os.getppid() != self.parent

    def running(self, total_timesteps: int) -> bool:
        stopped = self.stop.is_set() or self.orphaned()
        return not stopped and self.counter.value < total_timesteps

    def wait_for_go(self) -> bool:
        while not self.go.wait(0.1):
            if self.stop.is_set() or self.orphaned():
                return False
        return True


def env_step(envs, buf: Rollout, t: int, obs, action, shared: Shared):
    """Step a worker's env from s_t = obs, count the step in T, report an episode's end
    and store transition t in buf; returns s_{t+1} (the next episode's first, where one
    ended) and T."""
    buf.obs[t] = obs
    obs, reward, terminated, truncated, info = envs.step(action)
    step = shared.count(envs.num_envs)
    if "episode" in info:
        episode = {"episode": info["episode"], "_episode": info["_episode"]}
        shared.queue.put(("episode", step, episode))
    buf.rewards[t] = reward
    buf.terminations[t] = terminated
    buf.dones[t] = terminated | truncated
    # SAME_STEP autoreset: obs starts the next episode where one ended; the true s_{t+1}
    # of the transition is in info["final_obs"], and a truncation bootstraps from it
    buf.next_obs[t] = final_observations(obs, info)
    return obs, step


def ac_gradients(local: Agent, buf: Rollout, args: Args, log: bool):
    """Gradients of loss_k at θ_k from one rollout, into local's .grad (None before:
    apply_gradients passed the last ones on); with `log`, returns the diagnostics."""
    # θ_k has not changed since the rollout: V and log π computed now, with their
    # graphs, are the rollout's, in one batched pass
    n = len(buf.obs)
    # s_t for all t, then s_{t+1} for all t: (2n, 1, obs_dim)
    raw = torch.as_tensor(np.concatenate([buf.obs, buf.next_obs]), device=buf.device)
    # V(s_t), V(s_{t+1}): (n, 1) each
    values, next_values = local.value(raw).split(n)
    rewards = torch.as_tensor(buf.rewards, device=buf.device)
    terminations = torch.as_tensor(buf.terminations, device=buf.device)
    dones = torch.as_tensor(buf.dones, device=buf.device)
    advantages, critic_targets = estimate(
        rewards, values, next_values, terminations, dones, args.gamma, args.gae_lambda
    )
    actions = torch.as_tensor(buf.actions, device=buf.device).flatten(0, 1)
    logp, entropy = local.logp_entropy(raw[:n].flatten(0, 1), actions)
    pg_loss = policy_loss(logp, advantages.flatten())
    v_loss = value_loss(values.flatten(), critic_targets.flatten())
    check_finite(policy_loss=pg_loss, value_loss=v_loss)
    # loss_k = −Ê[log π_θk(a_t|s_t) Â_t] + c_v Ê[(V_θk(s_t) − R_t)²] − c_e Ê[H(π_θk)]
    loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
    loss.backward()
    if not log:
        return None
    return {
        "losses/policy_loss": pg_loss.item(),
        "losses/value_loss": v_loss.item(),
        "diagnostics/entropy": entropy.mean().item(),
        # 1 − Var[R_t − V(s_t)] / Var[R_t], over this rollout's n steps
        "diagnostics/explained_variance": explained_variance(
            values.detach(), critic_targets
        ),
    }


def q_gradients(local: QNetwork, target: QNetwork, buf: Rollout, args: Args, log):
    """Gradients of Algorithm 5's loss at θ_k over the T_update steps in buf, into
    local's .grad (None before); with `log`, returns the diagnostics. y uses θ⁻ as it
    is now, at the update (Algorithm 5 computes it at each step, ≤ T_update steps
    earlier)."""
    # the T steps of the E envs as one batch: (T·E, obs_dim) and (T·E,)
    obs = torch.as_tensor(buf.obs, device=buf.device).flatten(0, 1)
    next_obs = torch.as_tensor(buf.next_obs, device=buf.device).flatten(0, 1)
    actions = torch.as_tensor(buf.actions, device=buf.device).flatten(0, 1).long()
    rewards = torch.as_tensor(buf.rewards, device=buf.device).flatten()
    terminations = torch.as_tensor(buf.terminations, device=buf.device).flatten()
    with torch.no_grad():
        next_q_target = target(next_obs)  # Q_θ⁻(s', ·), (T·E, |A|)
    y = td_target(rewards, terminations, next_q_target, args.gamma)
    q_taken = local(obs).gather(1, actions.unsqueeze(1)).squeeze(1)  # Q_θk(s, a)
    # L = mean over the T·E steps of (y_t − Q_θk(s_t, a_t))²: Algorithm 5 sums the
    # gradients of its one env's T steps; a constant factor, which RMSProp's √v cancels
    loss = ((y - q_taken) ** 2).mean()
    check_finite(td_loss=loss)
    loss.backward()
    if not log:
        return None
    return {
        "losses/td_loss": loss.item(),
        "diagnostics/q_values": q_taken.mean().item(),
    }


def apply_gradients(local_params: list, optimizer, max_norm: float):
    """Hogwild (Recht et al. 2011): worker k's gradient, taken at its copy θ_k
    (local_params), updates the shared θ (the optimizer's parameters) in place, without
    a lock. Other workers may have moved θ since θ_k was copied: the gradient is a
    little stale, which asynchronous methods accept."""
    nn.utils.clip_grad_norm_(local_params, max_norm, foreach=True)
    for p, p_k in zip(optimizer.param_groups[0]["params"], local_params):
        # .grad is this process's own attribute of p; p's data is the shared tensor
        p.grad = p_k.grad
        # the next backward starts from no gradient
        p_k.grad = None
    optimizer.step()


@torch.no_grad()
def copy_parameters(dst: list, src: list):
    """θ_k ← θ, tensor by tensor, in place."""
    for p_dst, p_src in zip(dst, src):
        p_dst.copy_(p_src)


def worker_seed(seed: int, k: int) -> int:
    """Worker k's seed: a stream of its own, shared with no worker of another seed."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def work(k: int, args: Args, model, target, optimizer, shared: Shared):
    """Worker k: its own E envs and copy θ_k; rollouts and updates until T reaches
    total_timesteps or the main process says stop."""
    seed = worker_seed(args.seed, k)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    envs = make_envs(args.env_id, args.envs_per_worker)
    obs_space = envs.single_observation_space
    act_space = envs.single_action_space
    device = next(model.parameters()).device
    # θ_k: worker k's copy, on which it computes its gradients
    local = make_agent(args, obs_space, act_space).to(device)
    # the parameter lists, made once: walking the modules at every update costs time
    params = list(model.parameters())
    local_params = list(local.parameters())
    n = args.num_steps if args.method == "ac" else args.update_every
    buf = Rollout(n, args.envs_per_worker, obs_space, act_space, device)
    obs, _ = envs.reset(seed=seed)
    shared.queue.put(("ready", 0, k))
    if not shared.wait_for_go():
        return
    next_log = 0
    while shared.running(args.total_timesteps):
        # θ_k ← θ: the rollout and its gradient see one θ_k, while θ moves under the
        # other workers' updates
        copy_parameters(local_params, params)
        lr = args.learning_rate
        if args.anneal_lr:
            # η_T = η (1 − T / total_timesteps), from the global T
            lr = lr * max(1.0 - shared.counter.value / args.total_timesteps, 0.0)
        optimizer.param_groups[0]["lr"] = lr

        # ---- collect n steps (ac) or T_update steps (q) with θ_k ----
        if args.method == "ac":
            for t in range(n):
                buf.actions[t], env_action = local.explore(obs)  # a ~ π_θk(·|s_t)
                obs, step = env_step(envs, buf, t, obs, env_action, shared)
        else:
            decay = args.exploration_fraction * args.total_timesteps
            epsilon = linear_schedule(
                args.start_e, args.end_e, decay, shared.counter.value
            )
            for t in range(n):
                action = epsilon_greedy(local.act, obs, epsilon, act_space.n)
                buf.actions[t] = action
                obs, step = env_step(envs, buf, t, obs, action, shared)
                if step % args.target_period < envs.num_envs:
                    # θ⁻ ← θ in shared memory, by the worker whose E steps took T past
                    # a multiple of C: every worker's next target uses it
                    target.load_state_dict(model.state_dict())

        # ---- gradients at θ_k, applied to θ ----
        log = step >= next_log
        if args.method == "ac":
            stats = ac_gradients(local, buf, args, log)
        else:
            stats = q_gradients(local, target, buf, args, log)
        apply_gradients(local_params, optimizer, args.max_grad_norm)

        # ---- report ----
        if log:
            next_log = step + args.log_every
            stats["charts/learning_rate"] = lr
            if args.method == "q":
                stats["diagnostics/epsilon"] = epsilon
            shared.queue.put(("losses", step, stats))
    envs.close()


def worker(k: int, args: Args, model, target, optimizer, shared: Shared):
    """A worker process's entry: it ignores Ctrl-C (the main process stops it through
    shared.stop) and writes no file; what it has to say, including its end and its
    failures, goes through the queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        work(k, args, model, target, optimizer, shared)
    except FloatingPointError as e:  # a non-finite loss: the main process stops all
        shared.queue.put(("error", shared.counter.value, str(e)))
    except Exception:
        shared.queue.put(("crash", shared.counter.value, traceback.format_exc()))
    shared.queue.put(("done", shared.counter.value, k))


# ── Training: start the workers, log what they report, stop them, evaluate θ ──
class Workers(contextlib.AbstractContextManager):
    """The N worker processes: started and ready on entering, stopped on leaving.

    Started with 'spawn': each is a fresh interpreter that imports this file (nothing
    runs on import) and receives the shared tensors by handle. 'fork' starts in
    milliseconds, not seconds, but its child inherits the parent's threads' locks in
    whatever state they were (torch's and OpenMP's thread pools, TensorBoard's writer)
    and cannot use CUDA; 'spawn' shares only what it is given."""

    def __init__(self, args: Args, model, target, optimizer):
        ctx = mp.get_context("spawn")
        self.shared = Shared(ctx)
        self.procs = []
        for k in range(args.num_workers):
            worker_args = (k, args, model, target, optimizer, self.shared)
            process = ctx.Process(target=worker, args=worker_args, daemon=True)
            self.procs.append(process)

    def __enter__(self):
        # a spawned worker imports this file by its module name where it is not the
        # __main__ script (train called from a test): from this folder
        folder = os.path.dirname(os.path.abspath(__file__))
        if folder not in sys.path:
            sys.path.append(folder)
        # Until the workers are ready, Ctrl-C raises here, so that they are stopped
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            # Each worker starts with SIGINT blocked (the mask is inherited): Ctrl-C
            # reaches the whole process group, and only this process may act on it.
            # One that comes meanwhile is delivered here on unblocking.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                for process in self.procs:
                    process.start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            for _ in self.procs:
                kind, step, payload = self.receive()
                if kind != "ready":  # it failed while starting
                    self.handle(kind, payload)
        except BaseException:
            self.stop()
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
        return self

    def __exit__(self, kind, exc, tb):
        self.stop()

    def receive(self):
        """The next report (kind, T, payload) of a worker; a worker that died without
        one (killed) stops the run."""
        while True:
            try:
                return self.shared.queue.get(timeout=0.1)
            except queue.Empty:
                for k, process in enumerate(self.procs):
                    if process.exitcode not in (None, 0):
                        code = process.exitcode
                        raise RuntimeError(f"worker {k} died with exit code {code}")

    def handle(self, kind: str, payload):
        """A worker's failure, raised here: a non-finite loss as FloatingPointError
        (main prints it in one line and exits 1), anything else with its traceback."""
        if kind == "error":
            raise FloatingPointError(payload)
        raise RuntimeError(f"a worker failed:\n{payload}")

    def watch(self, run):
        """Log the workers' reports until each is done: episode returns and lengths at
        the T of their last step, losses every --log-every steps."""
        done = 0
        while done < len(self.procs):
            kind, step, payload = self.receive()
            run.step = step
            if kind == "episode":
                run.log_episodes(payload)
            elif kind == "losses" and run.due():
                run.log(payload)
            elif kind in ("error", "crash"):
                self.handle(kind, payload)
            elif kind == "done":
                done += 1
            run.progress()

    def stop(self):
        """Set the stop flag and join; a worker that has not ended 1.5 s later (one
        still importing) is terminated. The queue is drained meanwhile: a process ends
        only once its reports are out of its pipe."""
        self.shared.stop.set()
        deadline = time.time() + 1.5
        for process in self.procs:
            while process.is_alive() and time.time() < deadline:
                self.drain()
                process.join(0.05)
            if process.is_alive():
                process.terminate()
                process.join(1.0)

    def drain(self):
        with contextlib.suppress(queue.Empty):
            while True:
                self.shared.queue.get_nowait()


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    if device.type == "mps":  # mps tensors cannot be shared between processes
        check(args.device == "auto", "--device mps: a3c.py shares θ; use cpu")
        device = torch.device("cpu")
    # θ in shared memory: the workers read and write these very tensors
    model = make_agent(args, obs_space, act_space).to(device).share_memory()
    target = None
    if args.method == "q":
        # θ⁻, shared as well: whichever worker's step is due copies θ into it
        target = make_agent(args, obs_space, act_space).to(device).share_memory()
        target.load_state_dict(model.state_dict())
    optimizer = make_optimizer(args, model)
    with Workers(args, model, target, optimizer) as workers:
        with Run(args, model) as run:
            try:
                # ---- the workers collect, compute gradients and update θ; this
                # process logs what they report ----
                workers.shared.go.set()
                workers.watch(run)
            finally:
                # ---- stop every worker before the Run saves θ: it saves the last ----
                workers.stop()
                run.step = workers.shared.counter.value
            return run.finish()


# ── Run plumbing, identical in every script (tests/test_contract.py compares them) ──
# It gives the code above prepare (checks, seeding, device), Run (run folder, writer,
# progress line, Ctrl-C, save, evaluate), check and check_finite. It needs from there
# Args, check_args, make_agent (a model with .act), make_envs, train. Unlike the other
# banners: no BOX_DEFAULTS here (one set of defaults); Run lives in the main process.


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
