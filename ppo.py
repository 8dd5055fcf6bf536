"""PPO-Clip with GAE(λ), for Discrete and Box action spaces.

Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347). Each iteration
collects T steps from N parallel envs with π_old, estimates advantages with GAE
(Schulman et al. 2016, arXiv:1506.02438), then runs K epochs of minibatch steps on that
fixed batch, which grows "slightly off-policy" as θ moves away from θ_old:

  δ_t    = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)     (a terminal state has value 0)
  Â_t    = Σ_l (γλ)^l δ_{t+l}   (to the episode's end; a truncation bootstraps from V)
  r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t)     importance ratio: the data came from π_old
  L^CLIP(θ) = Ê[min(r_t(θ) Â_t, clip(r_t(θ), 1 − ε, 1 + ε) Â_t)]
  loss   = −L^CLIP + c_v Ê[(V_θ(s_t) − R_t)²] − c_e Ê[H(π_θ(·|s_t))]
  R_t    = Â_t + V_old(s_t)                     the critic's target

Importance sampling, E_p[f] = E_q[(p/q) f], lets samples of π_old estimate π_θ's
objective, but its variance explodes as π_θ leaves π_old: clipping removes any incentive
to push r_t(θ) outside [1 − ε, 1 + ε]. With --loss kl the objective is the same paper's
adaptive KL penalty, Ê[r_t(θ) Â_t] − β KL(π_old‖π_θ).

Discrete actions: softmax policy. Box: diagonal Gaussian with state-independent log σ,
clipped to the bounds when stepped, running observation and reward normalisation.
Defaults: RL Zoo's CartPole settings, and for Box envs the paper's MuJoCo settings
(BOX_DEFAULTS; `--env-id Hopper-v5 --help` shows the values that run).

Usage: python ppo.py --env-id Hopper-v5 --seed 3
       python ppo.py --eval-model runs/<run>/ppo.pt
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
    num_steps: int = 32
    """T: steps per env in each rollout (Box: 2048)"""
    learning_rate: float = 1e-3
    """Adam step size (Box: 3e-4)"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over training"""
    gamma: float = 0.98
    """γ: discount factor; typically 0.98-0.999 (Box: 0.99)"""
    gae_lambda: float = 0.8
    """λ: GAE, 0 = one-step TD, 1 = Monte Carlo (Box: 0.95)"""
    num_minibatches: int = 1
    """minibatches per epoch (Box: 32)"""
    update_epochs: int = 20
    """K: passes over each rollout (Box: 10)"""
    loss: Literal["clip", "kl"] = "clip"
    """policy objective: clipped ratio (PPO-Clip) or adaptive KL penalty (PPO-KL)"""
    clip_eps: float = 0.2
    """ε: clip range of r_t(θ); typically 0.1-0.3"""
    d_targ: float = 0.01
    """d_targ of --loss kl: β halves when KL < d_targ / 1.5, doubles above 1.5 d_targ"""
    kl_beta: float = 1.0
    """β: initial KL-penalty coefficient of --loss kl"""
    norm_adv: bool = True
    """normalise Â_t to zero mean and unit std in each minibatch"""
    clip_vloss: bool = False
    """clip V_θ(s) to within ε of V_old(s) in the value loss"""
    ent_coef: float = 0.0
    """c_e: entropy bonus coefficient; typically 0-0.01"""
    vf_coef: float = 0.5
    """c_v: value loss coefficient"""
    max_grad_norm: float = 0.5
    """clip the global gradient norm to this"""
    target_kl: float = math.inf
    """stop the epochs once KL(π_old‖π_θ) exceeds this; typically 0.01-0.05 (inf: no)"""
    normalize: bool = False
    """running observation and reward normalisation (Box: on)"""
    hidden: int = 64
    """width of the two hidden layers of the actor and of the critic"""

    # The run
    env_id: str = "CartPole-v1"
    """gymnasium environment id"""
    total_timesteps: int = 100_000
    """environment steps to train for, rounded up to whole iterations"""
    num_envs: int = 8
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


# The paper's MuJoCo settings, in place of the defaults above for a Box action space.
BOX_DEFAULTS = dict(
    total_timesteps=1_000_000,
    num_envs=1,
    num_steps=2048,
    learning_rate=3e-4,
    gamma=0.99,
    gae_lambda=0.95,
    num_minibatches=32,
    update_epochs=10,
    normalize=True,
)


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, the settings PPO cannot run with."""
    env = args.env_id
    batch = args.num_envs * args.num_steps
    m = args.num_minibatches
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations (an MLP's input); {env} has {obs_space}")
    known = isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box))
    check(known, f"needs a Discrete or Box action space; {env} has {act_space}")
    check(args.num_envs >= 1, f"--num-envs {args.num_envs} must be >= 1")
    check(args.num_steps >= 1, f"--num-steps {args.num_steps} must be >= 1")
    check(args.update_epochs >= 1, f"--update-epochs {args.update_epochs} must be >= 1")
    check(m >= 1, f"--num-minibatches {m} must be >= 1")
    check(batch % m == 0, f"--num-minibatches {m} must divide num_envs * num_steps")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    check(0 <= args.gamma <= 1, f"--gamma {args.gamma} must lie in [0, 1]")
    check(0 <= args.gae_lambda <= 1, "--gae-lambda must lie in [0, 1]")
    check(0 < args.learning_rate < math.inf, "--learning-rate must be > 0 and finite")
    check(0 < args.clip_eps < math.inf, f"--clip-eps {args.clip_eps} must be > 0")
    check(0 < args.max_grad_norm < math.inf, "--max-grad-norm must be > 0 and finite")
    check(0 < args.kl_beta < math.inf, f"--kl-beta {args.kl_beta} must be > 0")
    check(0 < args.d_targ < math.inf, f"--d-targ {args.d_targ} must be > 0")
    check(args.target_kl > 0, "--target-kl must be > 0 (inf: no early stop)")
    check(0 <= args.ent_coef < math.inf, f"--ent-coef {args.ent_coef} must be >= 0")
    check(0 <= args.vf_coef < math.inf, f"--vf-coef {args.vf_coef} must be >= 0")


# ── The estimators and losses, in the order the lecture derives them ──
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


def clipped_surrogate_loss(logp, logp_old, advantages, clip_eps: float):
    """−L^CLIP: minimising it is gradient ascent on
    Ê[min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t)]."""
    # r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t), from log-probabilities for stability
    ratio = (logp - logp_old).exp()
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    # The min is a pessimistic bound: where the clip binds, the term is constant in θ
    # (zero gradient), so nothing pushes r_t further out; where the clip would make
    # the objective worse, the unclipped term still counts.
    return -torch.min(ratio * advantages, clipped * advantages).mean()


def k3_kl(log_ratio):
    """k3 = (p/q − 1) − log(p/q), averaged over samples x ~ q, with log_ratio =
    log p(x) − log q(x): an estimate of KL(q‖p) that is unbiased and, unlike
    k1 = −log_ratio, never negative, with low variance (Schulman 2020, "Approximating
    KL divergence"; Igel's Deep RL notes, "KL-Regularization III")."""
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def kl_penalty_loss(logp, logp_old, advantages, beta: float):
    """PPO-KL: minimise −(Ê[r_t Â_t] − β KL(π_old‖π_θ)), the paper's direction (its
    eq. 8); CISC 7404 (Morad, "Proximal Policy Optimization") and Igel's Deep RL deck
    ("KL-Regularization I") penalise KL(π_θ‖π_old) = E_old[r_t log r_t] instead, which
    the same samples also estimate (README, "Reading this beside the lecture notes")."""
    surrogate = ((logp - logp_old).exp() * advantages).mean()
    # KL(π_old‖π_θ), estimated from the rollout's samples of π_old
    kl = k3_kl(logp - logp_old)
    return -surrogate + beta * kl


def value_loss(v, v_old, critic_targets, clip_eps: Optional[float]):
    """Ê[(V_θ(s_t) − R_t)²]; with clip_eps, the larger of that and the squared error of
    V clipped to V_old ± ε."""
    loss = (v - critic_targets) ** 2
    if clip_eps is not None:
        v_clipped = v_old + (v - v_old).clamp(-clip_eps, clip_eps)
        loss = torch.max(loss, (v_clipped - critic_targets) ** 2)
    return loss.mean()


# ── Networks, and the normalisation of their inputs and of the rewards ──
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
    """Separate actor and critic MLPs ("shared" trunks make the two losses fight): the
    actor outputs softmax logits, or the Gaussian mean with a free log σ; the critic
    V(s) has a linear output (values are unbounded)."""

    def __init__(self, obs_space, act_space, hidden: int, normalize: bool):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim = obs_space.shape[0]
        self.obs_rms = None
        if normalize:
            self.obs_rms = RunningMeanStd(obs_dim)
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        if self.discrete:
            act_dim = act_space.n
        else:
            act_dim = act_space.shape[0]
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            low = torch.as_tensor(act_space.low, dtype=torch.float32)
            high = torch.as_tensor(act_space.high, dtype=torch.float32)
            self.register_buffer("low", low)
            self.register_buffer("high", high)
        # a small last layer: π starts near uniform, or μ near 0
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        if self.obs_rms is None:
            return obs
        return self.obs_rms(obs)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def logp_entropy(self, obs, actions, with_entropy: bool = True, out=None):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch, in closed form (a distribution
        object per call costs a large share of a small network's step). H is None
        without with_entropy (no bonus, no graph for it)."""
        if out is None:
            out = self.actor(obs)
        entropy = None
        if self.discrete:
            # log π(a|s) = z_a − log Σ_b exp z_b
            log_pi = out.log_softmax(-1)
            logp = log_pi.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            if with_entropy:
                # H = −Σ_a π(a|s) log π(a|s)
                entropy = -(log_pi.exp() * log_pi).sum(-1)
            return logp, entropy
        log_std = self.log_std.expand_as(out)
        # log N(a; μ, σ²), summed over the independent action dimensions
        z = (actions - out) / log_std.exp()
        logp = (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        if with_entropy:
            # H = Σ_i (½ log(2πe) + log σ_i)
            entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1)
        return logp, entropy

    def sample(self, obs):
        """a ~ π_θ(·|s) and log π_θ(a|s)."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max: argmax_a (z_a − log E_a), E_a ~ Exp(1), samples softmax(z);
            # 2.5× faster than torch.multinomial
            noise = torch.empty_like(out).exponential_().log()
            actions = (out - noise).argmax(-1)
        else:
            actions = out + self.log_std.exp() * torch.randn_like(out)
        logp, _ = self.logp_entropy(obs, actions, with_entropy=False, out=out)
        return actions, logp

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """What the env is given: a Gaussian sample is clipped to the bounds (log π
        keeps the sampled one)."""
        if not self.discrete:
            action = action.clamp(self.low, self.high)
        return action.cpu().numpy()

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped
        to the bounds."""
        device = self.critic[0].weight.device
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
        out = self.actor(self.normalize(obs))
        if self.discrete:
            return out.argmax(-1).cpu().numpy()
        return out.clamp(self.low, self.high).cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Agent:
    return Agent(obs_space, act_space, args.hidden, args.normalize)


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


# ── Training: collect a rollout with π_old → GAE → K epochs of minibatches → log ──
class Rollout:
    """T steps of N envs collected with π_old; every tensor is (T, N) unless noted."""

    def __init__(self, T: int, N: int, obs_space, act_space, device):
        # normalised s_t, (T, N, obs_dim)
        self.obs = torch.zeros((T, N) + obs_space.shape, device=device)
        # a_t, (T, N) or (T, N, act_dim)
        self.actions = torch.zeros((T, N) + act_space.shape, device=device)
        self.logp = torch.zeros((T, N), device=device)  # log π_old(a_t|s_t)
        self.values = torch.zeros((T, N), device=device)  # V(s_t)
        self.rewards = torch.zeros((T, N), device=device)  # r_t
        self.terminations = torch.zeros((T, N), device=device)  # term_t
        self.dones = torch.zeros((T, N), device=device)  # term_t or trunc_t
        # V(true last observation) where an episode was truncated at t, else 0
        self.trunc_values = torch.zeros((T, N), device=device)


def collect_rollout(envs, agent: Agent, buf: Rollout, next_obs, reward_scale, run):
    """Fill `buf` with T steps of every env under a ~ π_old(·|s_t); returns s_T, where
    the next rollout starts."""
    device = buf.obs.device
    for t in range(buf.rewards.shape[0]):
        with torch.inference_mode():
            if agent.obs_rms is not None:
                agent.obs_rms.update(next_obs)
            obs = agent.normalize(next_obs)
            action, logp = agent.sample(obs)
            buf.obs[t] = obs
            buf.actions[t] = action
            buf.logp[t] = logp
            buf.values[t] = agent.value(obs)
        raw_obs, reward, terminated, truncated, info = envs.step(
            agent.env_action(action)
        )
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
        if truncated.any():
            # a time limit is not a terminal state: bootstrap from V(true last obs)
            idx = np.flatnonzero(truncated)
            final = np.stack(info["final_obs"][idx])
            final = torch.as_tensor(final, dtype=torch.float32, device=device)
            with torch.inference_mode():
                buf.trunc_values[t, idx] = agent.value(agent.normalize(final))
    return next_obs


def estimate(agent: Agent, buf: Rollout, next_obs, args: Args) -> dict:
    """Â_t by GAE and the critic targets R_t = Â_t + V_old(s_t), fixed during the
    update; returns the flattened batch."""
    # no_grad, not inference_mode: the losses keep Â_t and R_t for their backward
    with torch.no_grad():
        last_values = agent.value(agent.normalize(next_obs)).unsqueeze(0)
        # V(s_{t+1}) of the same episode: V of the true last observation at a truncation
        next_values = torch.cat([buf.values[1:], last_values])
        next_values = torch.where(buf.dones.bool(), buf.trunc_values, next_values)
        advantages = compute_gae(
            buf.rewards,
            buf.values,
            next_values,
            buf.terminations,
            buf.dones,
            args.gamma,
            args.gae_lambda,
        )
    buf.trunc_values.zero_()
    return dict(
        obs=buf.obs.flatten(0, 1),
        actions=buf.actions.flatten(0, 1),
        logp_old=buf.logp.flatten(),
        advantages=advantages.flatten(),
        values=buf.values.flatten(),
        critic_targets=(advantages + buf.values).flatten(),
    )


def minibatch_loss(agent: Agent, b: dict, mb, args: Args, beta: float):
    """The PPO loss on minibatch mb: (loss, policy loss, value loss, log π_θ)."""
    # no entropy graph without a bonus: it costs as much as the value loss's
    with_entropy = args.ent_coef != 0
    logp, entropy = agent.logp_entropy(b["obs"][mb], b["actions"][mb], with_entropy)
    advantages = b["advantages"][mb]
    if args.norm_adv and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    logp_old = b["logp_old"][mb]
    if args.loss == "clip":
        pg_loss = clipped_surrogate_loss(logp, logp_old, advantages, args.clip_eps)
    else:
        pg_loss = kl_penalty_loss(logp, logp_old, advantages, beta)
    v_clip = None
    if args.clip_vloss:
        v_clip = args.clip_eps
    v = agent.value(b["obs"][mb])
    v_loss = value_loss(v, b["values"][mb], b["critic_targets"][mb], v_clip)
    loss = pg_loss + args.vf_coef * v_loss
    if with_entropy:
        loss = loss - args.ent_coef * entropy.mean()
    return loss, pg_loss, v_loss, logp


def update(agent: Agent, optimizer, b: dict, args: Args, beta: float) -> dict:
    """K epochs of minibatch steps on the flattened batch b; stops early once
    KL(π_old‖π_θ) > --target-kl."""
    n = len(b["logp_old"])
    params = optimizer.param_groups[0]["params"]
    for epoch in range(args.update_epochs):
        if args.num_minibatches > 1:
            order = torch.randperm(n, device=b["logp_old"].device)
            minibatches = order.split(n // args.num_minibatches)
        else:
            # the whole batch, whose order does not matter: no shuffled copies (~5%)
            order = slice(None)
            minibatches = [order]
        new_logp = []
        for mb in minibatches:
            loss, pg_loss, v_loss, logp = minibatch_loss(agent, b, mb, args, beta)
            check_finite(policy_loss=pg_loss, value_loss=v_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
            optimizer.step()
            new_logp.append(logp.detach())
        # log π_θ during this epoch, against log π_old of the same samples
        logp_new = torch.cat(new_logp)
        logp_old = b["logp_old"][order]
        kl = k3_kl(logp_new - logp_old).item()  # KL(π_old‖π_θ)
        if kl > args.target_kl:
            break  # π_θ has moved far enough from π_old for this batch
    clipfrac = (
        ((logp_new - logp_old).exp() - 1.0).abs().gt(args.clip_eps).float().mean()
    )
    return {
        "losses/policy_loss": pg_loss.item(),
        "losses/value_loss": v_loss.item(),
        "diagnostics/approx_kl": kl,
        "diagnostics/clipfrac": clipfrac,
    }


def adapt_beta(beta: float, kl: float, d_targ: float) -> float:
    """PPO-KL's adaptive β (Schulman et al. 2017, section 4): halve it when the KL fell
    well short of d_targ, double it when the KL overshot."""
    if kl < d_targ / 1.5:
        return beta / 2
    if kl > d_targ * 1.5:
        return beta * 2
    return beta


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R]: 1 for a perfect critic, 0 for a constant one."""
    var = target.var()
    if var == 0:
        return float("nan")
    return float(1 - (target - pred).var() / var)


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    agent = make_agent(args, obs_space, act_space).to(device)
    # fused=True: one kernel for all parameters, ~4× faster steps than the default
    optimizer = torch.optim.Adam(
        agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True
    )
    reward_scale = None
    if args.normalize:
        reward_scale = RewardScale(args.num_envs, args.gamma, device)
    buf = Rollout(args.num_steps, args.num_envs, obs_space, act_space, device)
    # the fewest whole rollouts that reach --total-timesteps
    iterations = math.ceil(args.total_timesteps / (args.num_steps * args.num_envs))
    beta = args.kl_beta
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
    with Run(args, agent) as run:
        for iteration in range(iterations):
            lr = args.learning_rate
            if args.anneal_lr:
                lr = args.learning_rate * (1.0 - iteration / iterations)
            optimizer.param_groups[0]["lr"] = lr
            # ---- collect T steps from each of the N envs with π_old ----
            next_obs = collect_rollout(envs, agent, buf, next_obs, reward_scale, run)
            run.progress()
            # ---- advantages Â_t and critic targets R_t ----
            batch = estimate(agent, buf, next_obs, args)
            # ---- K epochs of minibatch gradient steps ----
            stats = update(agent, optimizer, batch, args, beta)
            if args.loss == "kl":
                beta = adapt_beta(beta, stats["diagnostics/approx_kl"], args.d_targ)
                stats["diagnostics/kl_beta"] = beta
            # ---- log, with H(π_θ(·|s)) of the updated policy over the batch ----
            if run.due():
                with torch.no_grad():
                    _, entropy = agent.logp_entropy(batch["obs"], batch["actions"])
                values = batch["values"]
                ev = explained_variance(values, batch["critic_targets"])
                stats["diagnostics/entropy"] = entropy.mean()
                stats["diagnostics/explained_variance"] = ev
                stats["charts/learning_rate"] = lr
                run.log(stats)
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
