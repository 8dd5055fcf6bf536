"""GRPO (Group Relative Policy Optimization) on bandits, PPO-style RLHF beside it, and
RLHF's pipeline around both.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) is PPO without a critic: for
each prompt it samples a group of G answers from π_old and uses each answer's reward
relative to its group as the advantage. A bandit is that setting with one-token
answers: prompt = context c, answer = arm a, reward r(c, a) of mean r*(c, a).

  Â_i  = (r_i − mean(r_1..r_G)) / (std(r_1..r_G) + eps)   in the group of c; no V(s)
  ρ_i  = π_θ(a_i|c) / π_old(a_i|c)        PPO's r_t(θ), over μ inner steps per batch
  k3_i = π_ref(a_i|c)/π_θ(a_i|c) − log(π_ref(a_i|c)/π_θ(a_i|c)) − 1  ≈ KL(π_θ‖π_ref)
  J(θ) = Ê[min(ρ_i Â_i, clip(ρ_i, 1 − ε, 1 + ε) Â_i) − β k3_i]   (1/|o_i| is 1 here)

--advantage ppo is PPO-style RLHF (Ouyang et al. 2022, arXiv:2203.02155), which Igel's
"GRPO" slide sets beside GRPO: a learned critic V_ψ(c) instead of the group mean, and
the KL leash folded into each answer's reward instead of a loss term:
  r̃_i = r_i − β log(π_old(a_i|c) / π_ref(a_i|c))   π_old: π_θ when a_i was drawn
  Â_i = r̃_i − V_ψ(c_i)                Igel's "PPO sampling": Â = R̂ − V̂, R̂_i = r̃_i
  min_ψ Ê[(V_ψ(c_i) − r̃_i)²]          the critic's regression, "Fit value function"
  J(θ) = Ê[min(ρ_i Â_i, clip(ρ_i, 1 − ε, 1 + ε) Â_i)]    "PPO-Clip optimization"
--scale-rewards none drops GRPO's std (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783:
it up-weights too easy or too hard prompts). --advantage reinforce subtracts the mean
R̄ of all earlier rewards (Sutton & Barto 2018, 2.8), a poor baseline when contexts
differ in difficulty: GRPO's group mean and PPO's V_ψ(c) are per prompt.

RLHF (Ouyang et al. 2022) in three stages, with --reward preference:
  1. reference policy π_ref: the initial policy, frozen (a bandit has no demos);
  2. reward model r_φ from comparisons a ≠ b ~ π_ref(·|c), labelled by a hidden r* with
     P(a ≻ b) = σ(r*(c, a) − r*(c, b)) (Bradley–Terry): `fit_reward_model`;
  3. RL with a KL leash β KL(π_θ‖π_ref): GRPO or PPO on r_φ (`train`).
Why the leash: r_φ saw few comparisons, of π_ref's answers only, and a policy free to
maximise r_φ finds its errors (over-optimisation, Gao et al. 2022, arXiv:2210.10760):
charts/learned_reward rises while charts/true_reward stalls or falls.

Usage: python grpo_bandit.py --env-id contextual [--advantage ppo] [--reward preference]
       python grpo_bandit.py --eval-model runs/<run>/grpo_bandit.pt
"""

import contextlib
import copy
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

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    advantage: Literal["grpo", "reinforce", "ppo"] = "grpo"
    """b of Â_i = r_i − b: the group's mean, R̄ of earlier rewards, or ppo's V_ψ(c)"""
    scale_rewards: Literal["group", "none"] = "group"
    """divide Â_i by the group's std; none: Dr. GRPO (--advantage grpo only)"""
    num_prompts: int = 8
    """B: prompts (contexts) per batch"""
    group_size: int = 8
    """G: answers (arm pulls) per prompt; typically 4-64"""
    num_inner_steps: int = 4
    """μ: gradient steps on each batch; typically 1-4"""
    learning_rate: float = 0.05
    """Adam step size of the policy (contextual: 0.01)"""
    critic_learning_rate: float = 0.05
    """Adam step size of the critic V_ψ(c) (--advantage ppo); typically 0.01-0.2"""
    clip_eps: float = 0.2
    """ε: clip range of ρ_i; typically 0.1-0.3"""
    beta: float = 0.04
    """β: weight of the KL to π_ref (k3 in the loss; ppo: in r̃); typically 0-0.04"""
    hidden: int = 64
    """width of the hidden layer of the contextual policy, critic and reward model"""
    reward: Literal["true", "preference"] = "true"
    """train on r ~ r*, or on r_φ learned from comparisons (RLHF)"""
    num_preferences: int = 100
    """comparisons the reward model r_φ learns from (--reward preference)"""
    rm_steps: int = 300
    """full-batch Adam steps that fit r_φ"""
    rm_learning_rate: float = 0.01
    """Adam step size of r_φ (contextual: 0.001)"""
    num_arms: int = 10
    """K: arms (answers)"""
    num_contexts: int = 8
    """contexts (prompts) of the contextual bandit; the others have one"""
    bandit_seed: int = 0
    """seed of the arm means r*(c, a): the same for every --seed, one problem"""

    # The run
    env_id: str = "gaussian"
    """the bandit (built in, no gymnasium env): gaussian, bernoulli or contextual"""
    total_timesteps: int = 20_000
    """environment steps to train for, rounded up to whole iterations"""
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
    progress: bool = True
    """show a progress line (only when stderr is a terminal)"""


# The bandits of --env-id (built in: no gymnasium env)
BANDITS = ("gaussian", "bernoulli", "contextual")
# (parse_args) --env-id contextual's defaults: its MLPs want smaller steps
CONTEXTUAL_DEFAULTS = dict(learning_rate=0.01, rm_learning_rate=0.001)


def check_args(args: Args):
    """Refuse, in one line, the settings that cannot work."""
    bandits = ", ".join(BANDITS)
    known = args.env_id in BANDITS
    check(known, f"--env-id {args.env_id}: no such bandit; use {bandits}")
    check(args.num_arms >= 2, f"--num-arms {args.num_arms} must be >= 2")
    check(args.num_contexts >= 1, f"--num-contexts {args.num_contexts} must be >= 1")
    check(args.num_prompts >= 1, f"--num-prompts {args.num_prompts} must be >= 1")
    # a group of one has no mean or std to compare its answer with
    check(args.group_size >= 2, f"--group-size {args.group_size} must be >= 2")
    mu = args.num_inner_steps
    check(mu >= 1, f"--num-inner-steps {mu} must be >= 1")
    check(args.hidden >= 1, f"--hidden {args.hidden} must be >= 1")
    lr = args.learning_rate
    check(0 < lr < math.inf, f"--learning-rate {lr} must be > 0 and finite")
    critic_lr = args.critic_learning_rate
    critic_ok = 0 < critic_lr < math.inf
    check(critic_ok, f"--critic-learning-rate {critic_lr} must be > 0 and finite")
    check(0 < args.clip_eps < math.inf, f"--clip-eps {args.clip_eps} must be > 0")
    check(0 <= args.beta < math.inf, f"--beta {args.beta} must be >= 0 and finite")
    n = args.num_preferences
    check(n >= 1, f"--num-preferences {n} must be >= 1")
    check(args.rm_steps >= 1, f"--rm-steps {args.rm_steps} must be >= 1")
    rm_lr = args.rm_learning_rate
    check(0 < rm_lr < math.inf, f"--rm-learning-rate {rm_lr} must be > 0 and finite")
    seed_ok = 0 <= args.bandit_seed < 2**32
    check(seed_ok, f"--bandit-seed {args.bandit_seed} must lie in [0, 2^32)")


# ── The math: GRPO's group advantages, the k3 KL estimate, the clipped objective;
# PPO-style RLHF's KL-shaped reward and value loss; RLHF's Bradley–Terry loss
def categorical_logp(logits, actions):
    """log π(a|c) = z_a − log Σ_b exp z_b, of logits z, (N, K), and actions a, (N,)."""
    log_pi = logits.log_softmax(-1)
    return log_pi.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_sample(logits):
    """a ~ softmax(z) by Gumbel-max: argmax_a (z_a − log E_a), E_a ~ Exp(1); 2.5× the
    speed of torch.multinomial."""
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)


def group_relative_advantages(rewards, scale: bool, eps: float = 1e-4):
    """Â of a (B, G) reward table, one row (group) per prompt: (r_i − mean(r)) /
    (std(r) + eps) within each row, or r_i − mean(r) with scale=False (Dr. GRPO). A
    group whose rewards are all equal says nothing about which answer is better: its Â
    is exactly 0, and eps keeps 0/0 from becoming NaN."""
    # Shifting by the group's first reward changes neither mean nor std, but turns equal
    # rewards into exact zeros rather than round-off, which the division by (std + eps)
    # would blow up.
    rewards = rewards - rewards[:, :1]
    # Â_i = r_i − mean(r_1..r_G)   (Dr. GRPO)
    advantages = rewards - rewards.mean(1, keepdim=True)
    if not scale:
        return advantages
    # Â_i = (r_i − mean(r_1..r_G)) / (std(r_1..r_G) + eps)   (GRPO)
    return advantages / (rewards.std(1, keepdim=True) + eps)


def k3_kl(log_ratio):
    """k3 = (p/q − 1) − log(p/q), averaged over samples x ~ q, with log_ratio =
    log p(x) − log q(x): an estimate of KL(q‖p) that is unbiased and, unlike
    k1 = −log_ratio, never negative, with low variance (Schulman 2020, "Approximating
    KL divergence"; Igel's Deep RL notes, "KL-Regularization III")."""
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def grpo_loss(logp, logp_old, logp_ref, advantages, clip_eps: float, beta: float):
    """−J(θ): minimising it is gradient ascent on Ê[min(ρÂ, clip(ρ, 1 − ε, 1 + ε)Â) −
    β k3]. The samples came from π_old, hence the ratio; the min makes the bound
    pessimistic, so nothing pushes ρ outside [1 − ε, 1 + ε]."""
    # ρ_i = π_θ(a_i|c) / π_old(a_i|c), in log space for stability
    ratio = (logp - logp_old).exp()
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    # min(ρ_i Â_i, clip(ρ_i, 1 − ε, 1 + ε) Â_i)
    surrogate = torch.min(ratio * advantages, clipped * advantages)
    # k3 of KL(π_θ‖π_ref): log_ratio = log π_ref − log π_θ. Like DeepSeekMath, on
    # π_old's samples rather than fresh samples of π_θ. Differentiated with the samples
    # held fixed, its expected gradient Σ_a (π_θ − π_ref)(a) ∇log π_θ(a) is that of
    # KL(π_ref‖π_θ): both pull π_θ back to π_ref.
    kl = k3_kl(logp_ref - logp)
    # −J(θ) = −(Ê[min(…)] − β k3): the minus turns the optimiser's descent into ascent
    return -(surrogate.mean() - beta * kl)


def kl_shaped_rewards(rewards, logp_old, logp_ref, beta: float):
    """r̃_i, PPO-style RLHF's reward (Ouyang et al. 2022, eq. 2): the KL leash paid per
    answer. log π_old is π_θ's log-prob when a_i was drawn, a constant: the penalty is
    part of the reward, not a loss term to differentiate. Its mean over a_i ~ π_old is
    KL(π_old‖π_ref) (the k1 estimate), and the policy gradient E[∇log π_θ(a|c) r̃] at
    θ = θ_old is exactly ∇(E[r] − β KL(π_θ‖π_ref)), since E[∇log π_θ] = 0."""
    # r̃_i = r_i − β (log π_old(a_i|c) − log π_ref(a_i|c))
    return rewards - beta * (logp_old - logp_ref)


def value_loss(values, critic_targets):
    """Ê[(V_ψ(c_i) − R_i)²] with R_i = r̃_i, the return of a one-answer episode (Igel's
    "Fit value function" with R̂ = r̃): V_ψ(c) regresses on E_{a~π_θ}[r̃(c, a)], the
    baseline of prompt c that GRPO estimates by its group mean instead."""
    # (V_ψ(c_i) − r̃_i)², averaged over the batch
    return ((values - critic_targets) ** 2).mean()


def bradley_terry_loss(r_w, r_l):
    """−log σ(r_φ(a_w) − r_φ(a_l)), the mean negative log-likelihood of "a_w ≻ a_l"
    under Bradley–Terry, P(a ≻ b) = σ(r(a) − r(b)). Per pair, its gradient in r_w is
    −σ(r_l − r_w) = −(1 − P(a_w ≻ a_l)), the opposite in r_l: pairs the model already
    orders confidently push little. Only differences count: r_φ + const fits as well."""
    return -nn.functional.logsigmoid(r_w - r_l).mean()


# ── The bandit, and the networks of the policy, the critic and the reward model
class Bandit:
    """Arm means r*(c, a), shape (contexts, K), fixed by bandit_seed. gaussian: r* ~
    N(0, 1), r ~ N(r*, 1) (Sutton & Barto's 10-armed testbed); bernoulli: r* ~ U(0, 1),
    r ~ Bernoulli(r*); contextual: Gaussian arms per context (questions with different
    right answers), plus a difficulty d_c ~ N(0, 3²) shared by the arms of context c."""

    def __init__(self, args: Args, device: torch.device):
        gen = torch.Generator().manual_seed(args.bandit_seed)
        kind = args.env_id
        num_contexts = 1
        if kind == "contextual":
            num_contexts = args.num_contexts
        shape = (num_contexts, args.num_arms)
        if kind == "bernoulli":
            means = torch.rand(shape, generator=gen)
        else:
            means = torch.randn(shape, generator=gen)
        if kind == "contextual":
            # plus the context's difficulty d_c ~ N(0, 3²), shared by its arms
            means = means + 3 * torch.randn((num_contexts, 1), generator=gen)
        self.bernoulli = kind == "bernoulli"
        self.means = means.to(device)
        # r*(c, a*(c)) and a*(c), each (contexts,)
        self.best_mean, self.best_arm = self.means.max(-1)

    def pull(self, contexts, actions, generator: Optional[torch.Generator] = None):
        """r(c_i, a_i), one pull of each (context, arm) pair, (N,)."""
        mean = self.means[contexts, actions]
        if self.bernoulli:
            return torch.bernoulli(mean, generator=generator)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + noise


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0):
    """Orthogonal weights of gain `std`, a constant bias (as OpenAI baselines' PPO)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Policy(nn.Module):
    """Softmax policy π_θ(a|c) = softmax(z(c))_a: logits z = θ, a table, for a
    one-context bandit; for the contextual bandit an MLP on the one-hot context (the
    prompt's embedding)."""

    def __init__(self, num_contexts: int, num_arms: int, hidden: int):
        super().__init__()
        self.num_contexts = num_contexts
        if num_contexts == 1:
            # uniform π to start
            self.theta = nn.Parameter(torch.zeros(num_arms))
        else:
            self.net = nn.Sequential(
                layer_init(nn.Linear(num_contexts, hidden)),
                nn.Tanh(),
                layer_init(nn.Linear(hidden, num_arms), std=0.01),
            )

    def forward(self, contexts):
        """Logits z(c), (N, K), of a batch of context indices, (N,)."""
        if self.num_contexts == 1:
            return self.theta.expand(len(contexts), -1)
        one_hot = nn.functional.one_hot(contexts, self.num_contexts).float()
        return self.net(one_hot)

    def act(self, contexts):
        """The greedy arm argmax_a π_θ(a|c) of each context, (N,), for evaluation: CPU
        tensors in and out, as the other scripts' act(obs) takes and gives arrays."""
        device = next(self.parameters()).device
        with torch.no_grad():
            return self(contexts.to(device)).argmax(-1).cpu()


class Critic(Policy):
    """V_ψ(c) of --advantage ppo: the policy's network with one output, read as the
    value of prompt c (a single number for a one-context bandit); ≈ 0 at the start."""

    def __init__(self, num_contexts: int, hidden: int):
        super().__init__(num_contexts, 1, hidden)

    def forward(self, contexts):
        """V_ψ(c), (N,), of a batch of context indices, (N,)."""
        return super().forward(contexts).squeeze(-1)


# ── RLHF's stage 2: the reward model r_φ, fitted to comparisons
def sample_preferences(bandit, reference, n: int):
    """n labelled comparisons: a context c, two different answers a, b ~ π_ref(·|c), and
    the hidden true reward's verdict, a ≻ b with probability σ(r*(c, a) − r*(c, b)).
    Returns (contexts, winners a_w, losers a_l), each (n,)."""
    means = bandit.means
    contexts = torch.randint(len(means), (n,), device=means.device)
    # π_ref is frozen: no gradient
    logits = reference(contexts)
    a = categorical_sample(logits)
    # b ~ π_ref(·|c) without a: b ≠ a
    b = categorical_sample(logits.scatter(-1, a.unsqueeze(-1), -math.inf))
    # P(a ≻ b) = σ(r*(c, a) − r*(c, b))
    p_a_wins = torch.sigmoid(means[contexts, a] - means[contexts, b])
    a_wins = torch.rand(n, device=a.device) < p_a_wins
    return contexts, torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def fit_reward_model(args: Args, bandit: Bandit, reference: Policy, run):
    """r_φ(c, ·), (contexts, K), fitted to --num-preferences comparisons, to stay frozen
    during RL; it is the policy's network with its outputs read as scores (LLM reward
    models start from the SFT network likewise)."""
    means = bandit.means
    reward_model = Policy(len(means), args.num_arms, args.hidden).to(means.device)
    optimizer = torch.optim.Adam(reward_model.parameters(), lr=args.rm_learning_rate)
    n = args.num_preferences
    contexts, winners, losers = sample_preferences(bandit, reference, n)
    for _ in range(args.rm_steps):
        # r_φ(c, ·) of each comparison's context, (n, K)
        scores = reward_model(contexts)
        r_w = scores.gather(-1, winners[:, None])
        r_l = scores.gather(-1, losers[:, None])
        loss = bradley_terry_loss(r_w, r_l)
        check_finite(reward_model_loss=loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    r_phi = reward_model(torch.arange(len(means), device=means.device)).detach()
    # 1000 held-out comparisons (r_φ never saw them): does r_φ order them as r* does?
    c, a_w, a_l = sample_preferences(bandit, reference, 1000)
    agree = (r_phi[c, a_w] - r_phi[c, a_l]) * (means[c, a_w] - means[c, a_l]) > 0
    accuracy = agree.float().mean()
    stats = {"losses/reward_model_loss": loss.item()}
    stats["diagnostics/reward_model_accuracy"] = accuracy
    run.log(stats)
    return r_phi


# ── Stage 3: GRPO (or PPO). B prompts × G answers from π_old → group advantages (or
# r̃ − V_ψ) → μ clipped steps (and μ critic steps) → log
def collect(policy: Policy, bandit: Bandit, log_ref, r_phi, B: int, G: int) -> dict:
    """B prompts, G answers to each from π_old, scored by the reward. Flat, (B*G,)."""
    contexts = torch.randint(len(bandit.means), (B,), device=log_ref.device)
    contexts = contexts.repeat_interleave(G)
    # π_old is π_θ as it is now: its log-probs are constants of the update
    logits = policy(contexts).detach()
    # a_i ~ π_old(·|c)
    actions = categorical_sample(logits)
    # r_i: a pull of the bandit (r ~ r*), or the learned r_φ(c, a_i)
    if r_phi is None:
        rewards = bandit.pull(contexts, actions)
    else:
        rewards = r_phi[contexts, actions]
    return dict(
        contexts=contexts,
        actions=actions,
        logp_old=categorical_logp(logits, actions),
        logp_ref=log_ref[contexts, actions],
        rewards=rewards,
    )


def estimate(args: Args, batch: dict, critic: Optional[Critic], reward_mean) -> dict:
    """The advantages Â_i, (B*G,), by --advantage: GRPO's group-relative ones, r_i − R̄
    (reward_mean, R̄ of all earlier rewards), or PPO's r̃_i − V_ψ(c_i); for ppo also
    the critic's targets r̃_i and its values V_ψ(c_i) before this batch's update."""
    rewards = batch["rewards"]
    if args.advantage == "grpo":
        scale = args.scale_rewards == "group"
        # one row per prompt: (B, G)
        groups = rewards.view(-1, args.group_size)
        advantages = group_relative_advantages(groups, scale).flatten()
        return dict(advantages=advantages)
    if args.advantage == "reinforce":
        # Â_i = r_i − R̄: one baseline for every prompt
        return dict(advantages=rewards - reward_mean)
    # r̃_i: the KL leash folded into the reward, with π_old (π_θ at sampling time)
    critic_targets = kl_shaped_rewards(
        rewards, batch["logp_old"], batch["logp_ref"], args.beta
    )
    # V_ψ(c_i) as it is before this batch's critic steps, a constant: the baseline, not
    # a thing to move. A copy: a one-context critic's output is a view of its parameter,
    # which the critic's optimizer changes in place.
    values = critic(batch["contexts"]).detach().clone()
    # Â_i = r̃_i − V_ψ(c_i)
    advantages = critic_targets - values
    return dict(advantages=advantages, critic_targets=critic_targets, values=values)


def update(args: Args, policy: Policy, optimizer, batch: dict, advantages):
    """μ gradient steps on one batch; ρ moves away from 1 after the first. Returns the
    last step's loss and log π_θ(a_i|c)."""
    logp_old = batch["logp_old"]
    logp_ref = batch["logp_ref"]
    # PPO-style RLHF has paid the KL in r̃ already: no k3 term in its loss
    beta = args.beta
    if args.advantage == "ppo":
        beta = 0.0
    for _ in range(args.num_inner_steps):
        logp = categorical_logp(policy(batch["contexts"]), batch["actions"])
        loss = grpo_loss(logp, logp_old, logp_ref, advantages, args.clip_eps, beta)
        check_finite(policy_loss=loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss, logp.detach()


def update_critic(args: Args, critic: Critic, optimizer, contexts, critic_targets):
    """μ Adam steps of the critic's regression on one batch, after the policy's (Igel's
    Algorithm 8 interleaves them; the networks share nothing, so the order changes
    nothing). Returns the last step's loss."""
    for _ in range(args.num_inner_steps):
        loss = value_loss(critic(contexts), critic_targets)
        check_finite(value_loss=loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R]: 1 for a perfect critic, 0 for a constant one."""
    var = target.var()
    if var == 0:
        return float("nan")
    return float(1 - (target - pred).var() / var)


def policy_stats(policy: Policy, log_ref, bandit: Bandit, r_phi) -> dict:
    """What π_θ has become, exactly, over every context (a bandit allows it): the
    rewards are gains over π_ref, Σ_a (π_θ − π_ref)(a|c) r(c, a) averaged over c, so
    learned and true reward start at 0 and share a scale."""
    with torch.no_grad():
        all_contexts = torch.arange(len(log_ref), device=log_ref.device)
        # log π_θ(·|c), (C, K)
        log_pi = policy(all_contexts).log_softmax(-1)
        pi = log_pi.exp()
        gain = pi - log_ref.exp()
        best_arm_prob = pi.gather(-1, bandit.best_arm.unsqueeze(-1))
        stats = {
            "charts/true_reward": (gain * bandit.means).sum(-1).mean(),
            "charts/best_arm_prob": best_arm_prob.mean(),
            # KL(π_θ‖π_ref) = Σ_a π_θ(a|c) log(π_θ(a|c)/π_ref(a|c)), exact
            "diagnostics/kl_ref": (pi * (log_pi - log_ref)).sum(-1).mean(),
            # H(π_θ(·|c)) = −Σ_a π_θ(a|c) log π_θ(a|c)
            "diagnostics/entropy": -(pi * log_pi).sum(-1).mean(),
        }
        if r_phi is not None:
            stats["charts/learned_reward"] = (gain * r_phi).sum(-1).mean()
    return stats


def train(args: Args) -> dict:
    device = prepare(args)
    bandit = Bandit(args, device)
    C = len(bandit.means)
    B = args.num_prompts
    G = args.group_size
    policy = Policy(C, args.num_arms, args.hidden).to(device)
    # π_ref: stage 1, the frozen "SFT model"
    reference = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    # log π_ref(·|c), (C, K), no gradient
    log_ref = reference(torch.arange(C, device=device)).log_softmax(-1)
    # Σ_pulls r*(c, a*(c)) − r*(c, a): the expected regret
    regret = torch.zeros((), device=device)
    # Σ r_i of all pulls so far, for R̄
    reward_sum = torch.zeros((), device=device)
    iterations = math.ceil(args.total_timesteps / (B * G))
    with Run(args, policy) as run:
        # stage 2 (--reward preference): the learned reward table r_φ(c, a), (C, K)
        r_phi = None
        if args.reward == "preference":
            r_phi = fit_reward_model(args, bandit, reference, run)
        # V_ψ(c) and its own optimizer (--advantage ppo), made after r_φ: the same seed
        # gives GRPO and PPO the same comparisons and the same r_φ
        critic = None
        if args.advantage == "ppo":
            critic = Critic(C, args.hidden).to(device)
            critic_lr = args.critic_learning_rate
            critic_optimizer = torch.optim.Adam(critic.parameters(), lr=critic_lr)
        # stage 3: GRPO (or PPO) on r (or r_φ), leashed to π_ref
        for iteration in range(iterations):
            # ---- collect: B prompts, G answers each from π_old, their rewards ----
            batch = collect(policy, bandit, log_ref, r_phi, B, G)
            contexts = batch["contexts"]
            actions = batch["actions"]
            rewards = batch["rewards"]
            # r*(c, a*(c)) − r*(c, a_i): what each pull lost, in expectation
            gaps = bandit.best_mean[contexts] - bandit.means[contexts, actions]
            regret += gaps.sum()
            # ---- estimate: the advantages Â_i ----
            # R̄ = mean of all earlier rewards (0 at first), for --advantage reinforce
            reward_mean = reward_sum / max(run.step, 1)
            est = estimate(args, batch, critic, reward_mean)
            reward_sum += rewards.sum()
            run.step += B * G
            # ---- update: μ clipped gradient steps (and μ critic steps) ----
            loss, logp = update(args, policy, optimizer, batch, est["advantages"])
            if critic is not None:
                critic_targets = est["critic_targets"]
                v_loss = update_critic(
                    args, critic, critic_optimizer, contexts, critic_targets
                )
            # ---- log (every --log-every pulls) ----
            if run.due():
                run.last_return = rewards.mean().item()
                # fraction of ρ_i outside [1 − ε, 1 + ε]
                ratio = (logp - batch["logp_old"]).exp()
                clipfrac = (ratio - 1.0).abs().gt(args.clip_eps).float().mean()
                stats = policy_stats(policy, log_ref, bandit, r_phi)
                stats["charts/regret"] = regret
                stats["charts/mean_reward"] = run.last_return
                stats["losses/policy_loss"] = loss.item()
                stats["diagnostics/clipfrac"] = clipfrac
                if critic is not None:
                    stats["losses/value_loss"] = v_loss.item()
                    ev = explained_variance(est["values"], critic_targets)
                    stats["diagnostics/explained_variance"] = ev
                run.log(stats)
            run.progress()
        return run.finish()


# ── Run plumbing, identical in every script (tests/test_contract.py compares them) ──
# It gives the code above prepare (checks, seeding, device), Run (run folder, writer,
# progress line, Ctrl-C, save, evaluate), check and check_finite. It needs from there
# Args, check_args, Bandit, Policy (.act), train, CONTEXTUAL_DEFAULTS. No gym env here:
# its prepare, evaluate, evaluate_saved and parse_args differ, and it has no env_spaces.


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: {os.path.basename(__file__)}: {msg}", file=sys.stderr)
        sys.exit(2)


def check_finite(**tensors):
    for name, x in tensors.items():
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{name} is not finite: learning rate too large?")


def prepare(args: Args):
    """Check the Args before writing anything, seed, pick the device (auto: GPU)."""
    check_args(args)
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
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Adam's moments of idle units decay into denormals (< 1e-38): ~100× slower on x86
    torch.set_flush_denormal(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    return torch.device(device)


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
    """Mean true reward of the greedy act(contexts) over --eval-episodes pulls, one per
    random context: a bandit episode is one pull, scored by r* whichever reward trained
    the policy. A bandit has no frames to record: video_dir is not used."""
    n = args.eval_episodes
    bandit = Bandit(args, torch.device("cpu"))
    gen = torch.Generator().manual_seed(args.seed + 10_000)
    contexts = torch.randint(len(bandit.means), (n,), generator=gen)
    ret = bandit.pull(contexts, act(contexts), gen).mean().item()
    print(f"eval/episodic_return {ret:.2f} over {n} greedy pulls")
    return ret


def evaluate_saved(args: Args):
    """Evaluate a file written by --save-model on its own bandit (--eval-episodes)."""
    check(args.eval_episodes >= 1, "--eval-model needs --eval-episodes >= 1")
    path = args.eval_model
    script = os.path.basename(__file__)
    run = ["seed", "device", "threads", "eval_episodes"]
    try:  # missing, empty and foreign files fail in many ways: one line, no warning
        with warnings.catch_warnings(action="ignore"):
            ckpt = torch.load(path, map_location="cpu")
            check(ckpt["script"] == script, f"{path} was saved by {ckpt['script']}")
            # the saved settings, with this command line's run fields
            saved = replace(Args(**ckpt["args"]), **{f: getattr(args, f) for f in run})
            same_env = args.env_id in (Args.env_id, saved.env_id)
            check(same_env, f"{path} was trained on {saved.env_id}: drop --env-id")
            device = prepare(saved)
            bandit = Bandit(saved, device)
            model = Policy(len(bandit.means), saved.num_arms, saved.hidden).to(device)
            model.load_state_dict(ckpt["model"])
    except Exception as e:
        check(False, f"cannot evaluate {path}: {type(e).__name__}: {str(e)[:200]}")
    evaluate(model.act, saved, None)


def parse_args(argv: list) -> Args:
    """Args (with CONTEXTUAL_DEFAULTS for contextual); a tyro error in one line."""
    pairs = dict(zip(argv, argv[1:])) | dict(a.split("=", 1) for a in argv if "=" in a)
    default = Args(env_id=pairs.get("--env-id", Args.env_id))
    if default.env_id == "contextual":
        default = replace(default, **CONTEXTUAL_DEFAULTS)
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
