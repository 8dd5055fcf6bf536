"""Synchronous advantage actor-critic (A2C), for Discrete and Box action spaces.

Mnih et al. 2016 (arXiv:1602.01783). A3C runs asynchronous actor-learners, each applying
its own gradients to shared parameters; A2C is the synchronous version (OpenAI
baselines): N envs step in lockstep and one batched gradient step follows each rollout
of n steps: simpler, deterministic, and as good. On-policy: the gradient only holds for
samples of the current π_θ, so each rollout is used once and thrown away (no replay).

  R_t = r_t + γ r_{t+1} + … + γ^{n−1} r_{t+n−1} + γ^n V(s_{t+n})   n-step return
  δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)     TD error; a terminal state: V = 0
  Â_t = Σ_l (γλ)^l δ_{t+l}     GAE(λ): λ = 1 gives R_t − V(s_t), the paper's A = Q − V;
                               λ = 0 gives δ_t
  loss = −Ê[log π_θ(a_t|s_t) Â_t] + c_v Ê[(V_θ(s_t) − R_t)²] − c_e Ê[H(π_θ(·|s_t))]
         with the critic's target R_t = Â_t + V(s_t)

Sutton & Barto's one-step actor-critic (section 13.3) is --num-envs 1 --num-steps 1
(then Â_t = δ_t for any λ), with one more factor I = γ^t on step t: the exact gradient
of the discounted objective from s_0. Like all deep-RL code we drop it and weight all
steps alike (reinforce.py's --weight-by-gamma-t shows both forms).

--critic q: the Q actor-critic of CSCI 1470 (Ewing), day 31's slide "Actor-Critic
Algorithm: Learn Q^π and π(a|s)", the critic form γ^j Q^π(S_j, A_j) of its "Variations
on a Theme..." and of the second deck's "Actor Critic Algorithms"; one-step Sarsa as in
Igel's "State-value function targets". Q_w(s, a) learns by one-step SARSA from the
action the policy takes next, and the actor weights log π by an advantage read off Q_w
(n then sets only the rollout's size, and λ is unused):
  y_t = r_t + γ (1 − term_t) Q_w(s_{t+1}, a′),  a′ ~ π_θ(·|s_{t+1})    the SARSA target
  Ψ_t = Q_w(s_t, a_t) − Σ_b π_θ(b|s_t) Q_w(s_t, b)          Discrete: Q − V, V exact
  Ψ_t = Q_w(s_t, a_t) − Q_w(s_t, ã),  ã ~ π_θ(·|s_t)         Box: a one-sample baseline
  loss = −Ê[log π_θ(a_t|s_t) Ψ_t] + c_v Ê[(Q_w(s_t, a_t) − y_t)²] − c_e Ê[H(π_θ(·|s_t))]
with two step sizes as on the slide: α_w = --q-lr-ratio · α_θ, the critic the faster.

Discrete actions: softmax policy. Box actions: diagonal Gaussian with state-independent
log σ, clipped to the bounds when stepped, running observation and reward normalisation.
Defaults: RL-Zoo's CartPole settings (SB3's A2C, 8 envs); for a Box env its
continuous-control settings (BOX_DEFAULTS; `--env-id Hopper-v5 --help` shows them).

Usage: python a2c.py --env-id CartPole-v1
       python a2c.py --env-id CartPole-v1 --critic q
       python a2c.py --env-id HalfCheetah-v5 --optimizer adam
       python a2c.py --eval-model runs/<run>/a2c.pt
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
    num_steps: int = 5
    """n: steps per env per rollout, n of the n-step return; typically 5-32 (Box: 8)"""
    learning_rate: float = 7e-4
    """step size of RMSprop or Adam; typically 1e-4-1e-3 (Box: 9.6e-4)"""
    anneal_lr: bool = False
    """decay the learning rate linearly to 0 over training (Box: on)"""
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"
    """RMSprop (decay 0.99, ε 1e-5) as the paper and SB3, or Adam (ε 1e-5)"""
    gamma: float = 0.99
    """γ: discount factor; typically 0.95-0.999"""
    gae_lambda: float = 1.0
    """λ: GAE, 1 = n-step returns, 0 = one-step TD; typically 0.9-1 (Box: 0.9)"""
    ent_coef: float = 0.0
    """c_e: entropy bonus coefficient; typically 0-0.01 (the paper: 0.01 on Atari)"""
    vf_coef: float = 0.5
    """c_v: value loss coefficient; typically 0.25-1 (Box: 0.4)"""
    max_grad_norm: float = 0.5
    """clip the global gradient norm to this; typically 0.5-1"""
    normalize: bool = False
    """running observation and reward normalisation (Box: on)"""
    hidden: int = 64
    """width of the two hidden layers of actor and critic; typically 64-256"""
    critic: Literal["v", "q"] = "v"
    """V_w(s) with n-step/GAE targets (A2C), or Q_w(s, a) learnt by one-step SARSA (the
    Q actor-critic; Discrete: one head per action, Box: the action is an input)"""
    q_lr_ratio: float = 10.0
    """α_w/α_θ: the Q critic's step size over the actor's (--critic q only); 3-30"""

    # The run
    env_id: str = "CartPole-v1"
    """gymnasium environment id"""
    total_timesteps: int = 200_000
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


# RL-Zoo's continuous-control settings, used in place of the defaults above when the
# env's action space is Box.
BOX_DEFAULTS = dict(
    total_timesteps=1_000_000,
    num_envs=4,
    num_steps=8,
    learning_rate=9.6e-4,
    anneal_lr=True,
    gae_lambda=0.9,
    vf_coef=0.4,
    normalize=True,
)


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, the settings A2C cannot work with."""
    flat = isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1
    check(flat, f"needs flat Box observations; {args.env_id} has {obs_space}")
    discrete_or_box = isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box))
    spaces_msg = f"needs a Discrete or Box action space; {args.env_id} has {act_space}"
    check(discrete_or_box, spaces_msg)
    check(args.num_steps >= 1, f"--num-steps {args.num_steps} must be >= 1")
    check(args.num_envs >= 1, f"--num-envs {args.num_envs} must be >= 1")
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
    ratio = args.q_lr_ratio
    ok = math.isfinite(ratio) and ratio > 0
    check(ok, f"--q-lr-ratio {ratio} must be finite and > 0")


# ── The estimators and losses, in the order the lecture derives them ──
# compute_gae is the copy shared with ppo.py and trpo.py: its T is the n of a rollout.
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


def policy_loss(logp, advantages):
    """−Ê[log π_θ(a_t|s_t) Â_t]: minimising it ascends J. Â_t carries no gradient (it
    is computed from a detached V), so the gradient is Ê[∇ log π_θ(a_t|s_t) Â_t], the
    policy gradient with V(s_t) as baseline."""
    return -(logp * advantages).mean()


def value_loss(values, critic_targets):
    """Ê[(V_θ(s_t) − R_t)²]: regression of the critic on the fixed targets R_t."""
    return ((values - critic_targets) ** 2).mean()


# --critic q: the Q actor-critic's target and advantage.
def sarsa_targets(rewards, next_q, terminations, gamma):
    """One-step SARSA targets y_t, shape (T, N); next_q[t] is Q_w(s_{t+1}, a′) with a′
    the action π_θ takes at s_{t+1} (s_{t+1} the true last observation where the
    episode was truncated); terminations[t] = 1 where s_{t+1} is terminal."""
    # y_t = r_t + γ (1 − term_t) Q_w(s_{t+1}, a′): a terminal state is worth 0
    return rewards + gamma * (1.0 - terminations) * next_q


def discrete_q_advantage(q_all, logits, actions):
    """Ψ = Q_w(s, a) − Σ_b π_θ(b|s) Q_w(s, b) = Q_w(s, a) − V(s): V is exact given
    Q_w, one sum over the heads. It has the expectation over a ~ π of plain Q_w(s, a)
    (Σ_a π(a|s) ∇ log π(a|s) = ∇ Σ_a π(a|s) = 0: a state baseline adds no bias,
    Guberina eq. 1.34-1.36; V = E_π Q and A = Q − V, eq. 1.72-1.76), without the
    level V(s) that plain Q carries into every sample: the same gradient in
    expectation, lower variance."""
    # Q_w(s, a) of the action taken
    q_sa = q_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    # V(s) = Σ_b π_θ(b|s) Q_w(s, b)
    v = (logits.softmax(-1) * q_all).sum(-1)
    return q_sa - v


# Log-probabilities and entropies in closed form: the numbers torch.distributions gives,
# without building a distribution object for every step (a large share of a small
# network's step time).
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


# ── Networks, normalisation and environments ──
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


class Agent(nn.Module):
    """Separate actor and critic MLPs ("shared" trunks make the two losses fight): the
    actor outputs softmax logits, or the Gaussian mean with a free log σ; the critic
    V(s) has a linear output (values are unbounded)."""

    def __init__(
        self, obs_space, act_space, hidden: int, normalize: bool, critic: str = "v"
    ):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim = obs_space.shape[0]
        if self.discrete:
            act_dim = act_space.n
        else:
            act_dim = act_space.shape[0]
        self.obs_rms = RunningMeanStd(obs_dim) if normalize else None
        if critic == "v":
            self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        elif self.discrete:
            # Q_w(s, ·): one output per action. out_std 0.01: the actions start with
            # about equal values, so Ψ ≈ 0 before the critic has learnt anything
            self.critic = mlp(obs_dim, act_dim, hidden, out_std=0.01)
        else:
            # Q_w(s, a) on concat(s, a)
            self.critic = mlp(obs_dim + act_dim, 1, hidden, out_std=0.01)
        # out_std 0.01: π starts near uniform, or μ ≈ 0
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            low = torch.as_tensor(act_space.low, dtype=torch.float32)
            high = torch.as_tensor(act_space.high, dtype=torch.float32)
            self.register_buffer("low", low)
            self.register_buffer("high", high)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        if self.obs_rms is None:
            return obs
        return self.obs_rms(obs)

    def value(self, obs):
        """V(s)"""
        return self.critic(obs).squeeze(-1)

    def q_value(self, obs, actions):
        """Q_w(s, a) for a batch (--critic q). Box: of the action clipped to the
        bounds, the one the env carried out."""
        if self.discrete:
            q_all = self.critic(obs)
            return q_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        a = actions.clamp(self.low, self.high)
        return self.critic(torch.cat([obs, a], -1)).squeeze(-1)

    def logp_entropy(self, obs, actions):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch."""
        out = self.actor(obs)
        if self.discrete:
            return categorical_logp(out, actions), categorical_entropy(out)
        log_std = self.log_std.expand_as(out)
        return gaussian_logp(out, log_std, actions), gaussian_entropy(log_std)

    def sample(self, obs):
        """a ~ π_θ(·|s). No log π here: the update recomputes it with its graph, from
        the same θ."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample
            # of softmax(z), ~2.5× faster than torch.multinomial on a small batch
            return (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """What the env is given: a Gaussian sample is clipped to the bounds; log π
        keeps the sampled one."""
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
            action = out.argmax(-1)
        else:
            action = out.clamp(self.low, self.high)
        return action.cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Agent:
    return Agent(obs_space, act_space, args.hidden, args.normalize, args.critic)


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


# ── Training: collect n·N steps with π_θ → n-step/GAE targets → one gradient step ──
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
        # r_t (scaled with --normalize)
        self.rewards = np.zeros((n, N), dtype=np.float32)
        # term_t = 1 where s_{t+1} is terminal
        self.terminations = np.zeros((n, N), dtype=np.float32)
        # done_t = 1 where the episode ended at step t (terminated or truncated)
        self.dones = np.zeros((n, N), dtype=np.float32)
        self.device = device


def collect_rollout(envs, agent: Agent, buf: Rollout, obs, reward_scale, run):
    """Fill `buf` with n steps of every env under a ~ π_θ(·|s_t); returns s_n, where the
    next rollout starts. The observation statistics stay fixed during a rollout, so the
    update sees the inputs π acted on."""
    for t in range(len(buf.obs)):
        with torch.inference_mode():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=buf.device)
            action = agent.sample(agent.normalize(obs_t))
        buf.obs[t] = obs
        buf.actions[t] = action.cpu().numpy()
        obs, reward, terminated, truncated, info = envs.step(agent.env_action(action))
        run.step += envs.num_envs
        run.log_episodes(info)
        done = terminated | truncated
        if reward_scale is not None:
            # r_t / std(discounted return), clipped: the scale of the return
            scaled = reward_scale(torch.as_tensor(reward), torch.as_tensor(done))
            reward = scaled.numpy()
        buf.rewards[t] = reward
        buf.terminations[t] = terminated
        buf.dones[t] = done
        # SAME_STEP autoreset: obs starts the next episode where one ended; the true
        # s_{t+1} of each transition is in info["final_obs"]
        buf.next_obs[t] = final_observations(obs, info)
    return obs


@torch.no_grad()
def estimate(buf: Rollout, values, next_values, args: Args):
    """Advantages Â_t and critic targets R_t of the rollout, (n, N) each. No gradient:
    the targets are constants, the critic regresses on them, it does not move them."""
    rewards = torch.as_tensor(buf.rewards, device=buf.device)
    terminations = torch.as_tensor(buf.terminations, device=buf.device)
    dones = torch.as_tensor(buf.dones, device=buf.device)
    advantages = compute_gae(
        rewards, values, next_values, terminations, dones, args.gamma, args.gae_lambda
    )
    # R_t = Â_t + V(s_t); with λ = 1 the n-step return
    critic_targets = advantages + values
    return advantages, critic_targets


@torch.no_grad()
def sarsa_next_actions(agent: Agent, next_obs, actions, dones):
    """a′ of each s_{t+1}, like `actions`: the action taken at s_{t+1}, the rollout's
    next row, where the episode goes on inside the rollout; a′ ~ π_θ(·|s_{t+1}) drawn
    now at the rollout's last step and at an episode's end (at a truncation from the
    true last observation; after a termination it is multiplied by 0). θ has not
    changed since the rollout, so the draws come from the policy that acted."""
    a_next = agent.sample(next_obs).to(actions.dtype)
    goes_on = dones[:-1] == 0
    a_next[:-1][goes_on] = actions[1:][goes_on]
    return a_next


def q_estimate(agent: Agent, all_obs, actions, buf: Rollout, args: Args):
    """--critic q: Q_w(s_t, a_t) with its graph, the actor's weights Ψ_t and the SARSA
    targets y_t, (n, N) each, from the normalised s_t and s_{t+1} stacked as
    (2n, N, obs_dim). Ψ_t and y_t carry no gradient: the critic regresses on fixed
    targets, and the actor's gradient is Ê[∇ log π_θ(a_t|s_t) Ψ_t]."""
    n = len(buf.obs)
    obs, next_obs = all_obs.split(n)
    dones = torch.as_tensor(buf.dones, device=buf.device)
    a_next = sarsa_next_actions(agent, next_obs, actions, dones)
    if agent.discrete:
        q_all = agent.critic(obs)
        q_sa = q_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    else:
        q_sa = agent.q_value(obs, actions)
    with torch.no_grad():
        # Q_w(s_{t+1}, a′)
        next_q = agent.q_value(next_obs, a_next)
        rewards = torch.as_tensor(buf.rewards, device=buf.device)
        terminations = torch.as_tensor(buf.terminations, device=buf.device)
        targets = sarsa_targets(rewards, next_q, terminations, args.gamma)
        if agent.discrete:
            logits = agent.actor(obs)
            psi = discrete_q_advantage(q_all, logits, actions)
        else:
            # Box: no sum over actions. Ψ = Q_w(s, a) − Q_w(s, ã), ã ~ π_θ(·|s): ã is
            # drawn independently of a, so E_a[∇ log π(a|s) Q_w(s, ã)] = 0 and the
            # baseline adds no bias; it removes the level of Q_w (returns of tens to
            # hundreds) that plain Q_w(s, a) would put into every sample, so the
            # gradient is driven by how a compares with another action of π, at the
            # price of one more critic pass and the noise of one sample.
            a_tilde = agent.sample(obs)
            psi = q_sa - agent.q_value(obs, a_tilde)
    return q_sa, psi, targets


def update(agent: Agent, optimizer, buf: Rollout, args: Args, log: bool):
    """Estimate the targets, then one gradient step on the n·N samples of the rollout;
    with `log`, returns the iteration's diagnostics."""
    # θ has not changed since the rollout, so V(s_t) and log π(a_t|s_t) computed now,
    # with their graphs, are the values of the rollout: one batched pass, not one a step
    n = len(buf.obs)
    # raw s_t for all t, then s_{t+1} for all t: (2n, N, obs_dim)
    raw = torch.as_tensor(np.concatenate([buf.obs, buf.next_obs]), device=buf.device)
    all_obs = agent.normalize(raw)
    # a_t, (n, N) or (n, N, act_dim)
    actions = torch.as_tensor(buf.actions, device=buf.device)
    if args.critic == "q":
        # Q_w(s_t, a_t) as the critic's "values", Ψ_t as the advantages, y_t
        values, advantages, critic_targets = q_estimate(
            agent, all_obs, actions, buf, args
        )
    else:
        # V(s_t), V(s_{t+1}): (n, N) each
        values, next_values = agent.value(all_obs).split(n)
        advantages, critic_targets = estimate(buf, values, next_values, args)

    obs = all_obs[:n].flatten(0, 1)
    logp, entropy = agent.logp_entropy(obs, actions.flatten(0, 1))
    pg_loss = policy_loss(logp, advantages.flatten())
    v_loss = value_loss(values.flatten(), critic_targets.flatten())
    check_finite(policy_loss=pg_loss, value_loss=v_loss)
    # loss = −Ê[log π_θ(a_t|s_t) Â_t] + c_v Ê[(V_θ(s_t) − R_t)²] − c_e Ê[H(π_θ(·|s_t))]
    loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
    optimizer.step()
    if agent.obs_rms is not None:
        # new statistics for the next rollout
        agent.obs_rms.update(raw[:n].flatten(0, 1))
    if not log:
        return None
    # 1 − Var[R_t − V(s_t)] / Var[R_t]
    ev = explained_variance(values.detach(), critic_targets)
    return {
        "losses/policy_loss": pg_loss.item(),
        "losses/value_loss": v_loss.item(),
        "diagnostics/entropy": entropy.mean().item(),
        "diagnostics/explained_variance": ev,
        "diagnostics/advantage_mean": advantages.mean().item(),
        "diagnostics/advantage_std": advantages.std().item(),
    }


def make_optimizer(args: Args, agent: Agent) -> torch.optim.Optimizer:
    lr = args.learning_rate
    params = agent.parameters()
    if args.critic == "q":
        # two step sizes, α_θ for the actor and α_w = ratio·α_θ for Q_w, as in the Q
        # actor-critic slide. RMSprop and Adam scale each parameter's step to about α
        # whatever the loss's size, so c_v cannot speed the critic up. At α_w = α_θ
        # the one-step critic lags the actor: Q_w starts at 0 below returns of tens
        # and rises fastest for the action taken most often, Ψ favours that action,
        # π takes it more: on CartPole seeds 2 and 5 collapsed to one action within
        # 10k steps (seed 1 did not). A critic 10× faster tracked Q^π on all three.
        critic = list(agent.critic.parameters())
        in_critic = {id(p) for p in critic}
        actor = [p for p in agent.parameters() if id(p) not in in_critic]
        params = [
            dict(params=actor),
            dict(params=critic, lr=lr * args.q_lr_ratio),
        ]
    if args.optimizer == "rmsprop":
        # decay 0.99 and ε = 1e-5, as SB3's A2C and OpenAI baselines
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-5, foreach=True)
    # fused=True: one kernel for all parameters, ~4x faster steps than default on CPU
    return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=True)


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    agent = make_agent(args, obs_space, act_space).to(device)
    optimizer = make_optimizer(args, agent)
    reward_scale = None
    if args.normalize:
        # on the CPU, beside the env's rewards; training only, it is not saved
        reward_scale = RewardScale(args.num_envs, args.gamma, "cpu")
    buf = Rollout(args.num_steps, args.num_envs, obs_space, act_space, device)
    batch = args.num_steps * args.num_envs
    iterations = math.ceil(args.total_timesteps / batch)
    obs, _ = envs.reset(seed=args.seed)
    with Run(args, agent) as run:
        for iteration in range(iterations):
            lr = args.learning_rate
            if args.anneal_lr:
                # linear decay to 0 over training
                lr = args.learning_rate * (1.0 - iteration / iterations)
            optimizer.param_groups[0]["lr"] = lr
            if args.critic == "q":
                # α_w = ratio·α_θ, annealed alike
                optimizer.param_groups[1]["lr"] = lr * args.q_lr_ratio

            # ---- collect n steps from each of the N envs with the current π_θ ----
            obs = collect_rollout(envs, agent, buf, obs, reward_scale, run)
            run.progress()

            # ---- targets R_t and advantages Â_t, then one gradient step ----
            log = run.due()
            stats = update(agent, optimizer, buf, args, log)

            # ---- log ----
            if log:
                run.log({**stats, "charts/learning_rate": lr})
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
