"""GRPO (Group Relative Policy Optimization) on multi-armed and contextual bandits, and the RLHF pipeline around it.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) is PPO without a critic: for each prompt it samples a group
of G answers from π_old and uses each answer's reward relative to its group as the advantage. A bandit is that
setting with one-token answers: prompt = context c, answer = arm a, reward r(c, a) of mean r*(c, a).

  Â_i   = (r_i − mean(r_1..r_G)) / (std(r_1..r_G) + eps)      within the group of prompt c; no V(s) to learn
  ρ_i   = π_θ(a_i|c) / π_old(a_i|c)                            importance ratio over μ inner steps per batch
  k3_i  = π_ref(a_i|c)/π_θ(a_i|c) − log(π_ref(a_i|c)/π_θ(a_i|c)) − 1     ≥ 0, unbiased estimate of KL(π_θ‖π_ref)
  J(θ)  = Ê[min(ρ_i Â_i, clip(ρ_i, 1 − ε, 1 + ε) Â_i) − β k3_i]          (the 1/|o_i| token average is 1 here)

--scale-rewards none drops the std (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783: it up-weights too easy or too hard
prompts). --advantage reinforce subtracts the mean R̄ of all earlier rewards (Sutton & Barto 2018, 2.8), a poor
baseline when contexts differ in difficulty: the per-prompt group mean is GRPO's point.

RLHF (Ouyang et al. 2022, arXiv:2203.02155) in three stages, with --reward preference:
  1. supervised reference policy π_ref: the initial policy, frozen (`reference`; a bandit has no demonstrations);
  2. reward model from comparisons: a ≠ b ~ π_ref(·|c), labelled by a hidden r* with P(a ≻ b) = σ(r*(c, a) −
     r*(c, b)) (Bradley–Terry), fitted by `bradley_terry_loss` (`sample_preferences`, `fit_reward_model`);
  3. RL with a KL leash: GRPO on r_φ, penalised by β KL(π_θ‖π_ref) (the loop in `train`).
Why the leash: r_φ saw few comparisons, of π_ref's answers only, and a policy free to maximise r_φ finds its errors
(over-optimisation, Gao et al. 2022, arXiv:2210.10760): charts/learned_reward rises while charts/true_reward stalls
or falls. β > 0 holds π_θ near π_ref, where r_φ was fitted.

Usage: python grpo_bandit.py --env-id contextual [--reward preference --num-preferences 30 --beta 0]
       python grpo_bandit.py --eval-model runs/<run>/grpo_bandit.pt
"""

import copy
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    advantage: Literal["grpo", "reinforce"] = "grpo"  # b of Â = r − b: group mean, or running mean R̄ (REINFORCE)
    scale_rewards: Literal["group", "none"] = "group"  # divide Â by the group's std; none = Dr. GRPO (grpo only)
    num_prompts: int = 8  # B: prompts (contexts) per batch
    group_size: int = 8  # G: answers (arm pulls) per prompt
    num_inner_steps: int = 4  # μ: gradient steps on each batch
    learning_rate: float = 0.05  # Adam step size of the policy (contextual: 0.01)
    clip_eps: float = 0.2  # ε: clip range of ρ, typically 0.1-0.3
    beta: float = 0.04  # β: weight of the k3 KL penalty to π_ref, typically 0-0.04 (0 drops π_ref)
    hidden: int = 64  # width of the hidden layer of the contextual policy and of the reward model
    reward: Literal["true", "preference"] = "true"  # train on r ~ r*, or on r_φ learned from comparisons (RLHF)
    num_preferences: int = 100  # comparisons the reward model r_φ learns from (--reward preference)
    rm_steps: int = 300  # full-batch Adam steps that fit r_φ
    rm_learning_rate: float = 0.01  # Adam step size of r_φ (contextual: 0.001)
    num_arms: int = 10  # K: arms (answers)
    num_contexts: int = 8  # contexts (prompts) of the contextual bandit; the others have one
    bandit_seed: int = 0  # seed of the arm means r*(c, a): the same across --seed, so seeds face the same problem

    # The run
    env_id: str = "gaussian"  # bandit, built in (no gymnasium env): gaussian, bernoulli or contextual
    total_timesteps: int = 20_000  # arm pulls (answers) to train for
    seed: int = 1  # seed of random, numpy, torch and the environments
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name, part of the run folder's name
    torch_deterministic: bool = True  # set torch.backends.cudnn.deterministic
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto picks cuda, then mps, then cpu
    threads: int = 1  # torch CPU threads (1 is fastest for small networks on CPU); 0 keeps torch's default
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the weights (with any normalisation statistics) and these Args to the run folder
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    progress: bool = True  # show a progress line (only when stderr is a terminal)


CONTEXTUAL_DEFAULTS = dict(learning_rate=0.01, rm_learning_rate=0.001)  # (parse_args) MLPs want smaller steps
BANDITS = ("gaussian", "bernoulli", "contextual")


# ── The math: GRPO's group advantages, k3 KL estimate and clipped objective; RLHF's Bradley–Terry loss ──
def categorical_logp(logits, actions):  # log π(a|c) = z_a − log Σ_b exp z_b
    return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def sample(logits):  # a ~ softmax(z) by Gumbel-max, argmax_a (z_a − log E_a), E_a ~ Exp(1); 2.5× multinomial's speed
    return (logits - torch.empty_like(logits).exponential_().log()).argmax(-1)


def group_relative_advantages(rewards, scale: bool, eps: float = 1e-4):
    """Â of a (B, G) reward table, one row (group) per prompt: (r_i − mean(r)) / (std(r) + eps) within each row,
    or r_i − mean(r) with scale=False (Dr. GRPO). A group whose rewards are all equal says nothing about which
    answer is better: its Â is exactly 0, and eps keeps 0/0 from becoming NaN."""
    # Shifting by the group's first reward changes neither mean nor std, but turns equal rewards into exact zeros
    # rather than round-off, which the division by (std + eps) would blow up.
    rewards = rewards - rewards[:, :1]
    advantages = rewards - rewards.mean(1, keepdim=True)
    return advantages / (rewards.std(1, keepdim=True) + eps) if scale else advantages


def k3_kl(logp, logp_ref):
    """k3 estimate of KL(π_θ‖π_ref) per sample a ~ π_θ (Schulman 2020, "Approximating KL divergence"): unbiased and,
    unlike k1 = log(π_θ/π_ref), never negative, with low variance. Differentiated with the samples held fixed, as in
    the loss, its expected gradient Σ_a (π_θ − π_ref)(a) ∇log π_θ(a) is that of KL(π_ref‖π_θ): both pull π_θ back."""
    log_ratio = logp_ref - logp  # log(π_ref/π_θ)
    return log_ratio.exp() - log_ratio - 1.0  # k3 = π_ref/π_θ − log(π_ref/π_θ) − 1, estimates KL(π_θ‖π_ref)


def grpo_loss(logp, logp_old, logp_ref, advantages, clip_eps: float, beta: float):
    """−J(θ): minimising it is gradient ascent on Ê[min(ρÂ, clip(ρ, 1 − ε, 1 + ε)Â) − β k3]. The samples came from
    π_old, hence the ratio; the min makes the bound pessimistic, so nothing pushes ρ outside [1 − ε, 1 + ε]. Like
    DeepSeekMath, k3 (of KL(π_θ‖π_ref)) is evaluated on π_old's samples rather than fresh samples of π_θ."""
    ratio = (logp - logp_old).exp()  # ρ = π_θ(a|c) / π_old(a|c), in log space for stability
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    return -(surrogate - beta * k3_kl(logp, logp_ref)).mean()


def bradley_terry_loss(r_w, r_l):
    """−log σ(r_φ(a_w) − r_φ(a_l)), the mean negative log-likelihood of "a_w ≻ a_l" under Bradley–Terry,
    P(a ≻ b) = σ(r(a) − r(b)). Per pair, its gradient in r_w is −σ(r_l − r_w) = −(1 − P(a_w ≻ a_l)), the opposite in
    r_l: pairs the model already orders confidently push little. Only differences count: r_φ + const fits as well."""
    return -nn.functional.logsigmoid(r_w - r_l).mean()


# ── The bandit, and the network of the policy and of the reward model ──
class Bandit:
    """Arm means r*(c, a), shape (contexts, K), fixed by bandit_seed. gaussian: r* ~ N(0, 1), r ~ N(r*, 1) (Sutton &
    Barto's 10-armed testbed); bernoulli: r* ~ U(0, 1), r ~ Bernoulli(r*); contextual: Gaussian arms per context
    (questions with different right answers), plus a difficulty d_c ~ N(0, 3²) shared by the arms of context c."""

    def __init__(self, args: Args, device: torch.device):
        gen, kind = torch.Generator().manual_seed(args.bandit_seed), args.env_id
        shape = (args.num_contexts if kind == "contextual" else 1, args.num_arms)
        means = torch.rand(shape, generator=gen) if kind == "bernoulli" else torch.randn(shape, generator=gen)
        if kind == "contextual":  # plus the context's difficulty d_c ~ N(0, 3²), shared by its arms
            means = means + 3 * torch.randn((shape[0], 1), generator=gen)
        self.bernoulli, self.means = kind == "bernoulli", means.to(device)
        self.best_mean, self.best_arm = self.means.max(-1)  # r*(c, a*(c)) and a*(c), each (contexts,)

    def pull(self, contexts, actions, generator: Optional[torch.Generator] = None):  # r(c_i, a_i), one pull each
        mean = self.means[contexts, actions]
        if self.bernoulli:
            return torch.bernoulli(mean, generator=generator)
        return mean + torch.randn(mean.shape, generator=generator, device=mean.device)


class Policy(nn.Module):
    """Softmax policy π_θ(a|c) = softmax(z(c))_a: logits z = θ, a table, for a one-context bandit; for the
    contextual bandit an MLP on the one-hot context (the prompt's embedding)."""

    def __init__(self, num_contexts: int, num_arms: int, hidden: int):
        super().__init__()
        self.num_contexts = num_contexts
        if num_contexts == 1:
            self.theta = nn.Parameter(torch.zeros(num_arms))  # uniform π to start
        else:
            self.net = nn.Sequential(layer_init(nn.Linear(num_contexts, hidden)), nn.Tanh(),
                                     layer_init(nn.Linear(hidden, num_arms), std=0.01))  # fmt: skip

    def forward(self, contexts):  # logits z(c), (N, K), of a batch of context indices, (N,)
        if self.num_contexts == 1:
            return self.theta.expand(len(contexts), -1)
        return self.net(nn.functional.one_hot(contexts, self.num_contexts).float())


# ── Training: (fit r_φ) → B prompts × G answers from π_old → group advantages → μ clipped steps → log ──
def sample_preferences(bandit, reference, n: int):
    """n labelled comparisons: a context c, two different answers a, b ~ π_ref(·|c), and the hidden true reward's
    verdict, a ≻ b with probability σ(r*(c, a) − r*(c, b)). Returns (contexts, winners a_w, losers a_l), each (n,)."""
    contexts = torch.randint(len(bandit.means), (n,), device=bandit.means.device)
    logits = reference(contexts)  # frozen: no gradient
    a = sample(logits)
    b = sample(logits.scatter(-1, a.unsqueeze(-1), -math.inf))  # π_ref(·|c) without a: b ≠ a
    a_wins = torch.rand(n, device=a.device) < torch.sigmoid(bandit.means[contexts, a] - bandit.means[contexts, b])
    return contexts, torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def fit_reward_model(args: Args, bandit: Bandit, reference: Policy, run) -> torch.Tensor:
    """r_φ(c, ·), (contexts, K), fitted to --num-preferences comparisons, to stay frozen during RL; it is the policy's
    network with its outputs read as scores (LLM reward models start from the SFT network likewise)."""
    reward_model = Policy(len(bandit.means), args.num_arms, args.hidden).to(bandit.means.device)
    optimizer = torch.optim.Adam(reward_model.parameters(), lr=args.rm_learning_rate)
    contexts, winners, losers = sample_preferences(bandit, reference, args.num_preferences)
    for _ in range(args.rm_steps):
        scores = reward_model(contexts)  # r_φ(c, ·) of each comparison's context, (n, K)
        loss = bradley_terry_loss(scores.gather(-1, winners[:, None]), scores.gather(-1, losers[:, None]))
        check_finite(reward_model_loss=loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    r_phi = reward_model(torch.arange(len(bandit.means), device=bandit.means.device)).detach()
    c, w, l = sample_preferences(bandit, reference, 1000)  # held out: r_φ never saw them
    accuracy = ((r_phi[c, w] - r_phi[c, l]) * (bandit.means[c, w] - bandit.means[c, l]) > 0).float().mean()
    run.log({"losses/reward_model_loss": loss.item(), "diagnostics/reward_model_accuracy": accuracy})
    return r_phi


def policy_stats(policy: Policy, log_ref, bandit: Bandit, r_phi) -> dict:
    """What π_θ has become, exactly, over every context (a bandit allows it): the rewards are gains over π_ref,
    Σ_a (π_θ − π_ref)(a|c) r(c, a) averaged over c, so learned and true reward start at 0 and share a scale."""
    with torch.no_grad():
        log_pi = policy(torch.arange(len(log_ref), device=log_ref.device)).log_softmax(-1)  # log π_θ(·|c), (C, K)
        pi, gain = log_pi.exp(), log_pi.exp() - log_ref.exp()
        stats = {"charts/true_reward": (gain * bandit.means).sum(-1).mean(),
                 "charts/best_arm_prob": pi.gather(-1, bandit.best_arm.unsqueeze(-1)).mean(),
                 "diagnostics/kl_ref": (pi * (log_pi - log_ref)).sum(-1).mean(),  # KL(π_θ‖π_ref), exact
                 "diagnostics/entropy": -(pi * log_pi).sum(-1).mean()}  # H(π_θ(·|c))  # fmt: skip
        if r_phi is not None:
            stats["charts/learned_reward"] = (gain * r_phi).sum(-1).mean()
    return stats


def train(args: Args) -> dict:
    check_args(args)
    device = setup(args)
    bandit = Bandit(args, device)
    policy = Policy(len(bandit.means), args.num_arms, args.hidden).to(device)
    reference = copy.deepcopy(policy).requires_grad_(False)  # π_ref: stage 1, the frozen "SFT model"
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    B, G, C = args.num_prompts, args.group_size, len(bandit.means)
    log_ref = reference(torch.arange(C, device=device)).log_softmax(-1)  # log π_ref(·|c), (C, K), no gradient
    regret, reward_sum = torch.zeros((2,), device=device)  # Σ_pulls r*(c, a*(c)) − r*(c, a) (expected regret); Σ r
    with Run(args, policy) as run:
        # stage 2 (--reward preference): the learned reward table r_φ(c, a), (C, K), fitted to comparisons
        r_phi = fit_reward_model(args, bandit, reference, run) if args.reward == "preference" else None
        for _ in range(num_iterations(args, B * G)):  # stage 3: GRPO on r (or r_φ), leashed to π_ref
            # ---- B prompts, G answers each from π_old, scored by the reward ----
            contexts = torch.randint(C, (B,), device=device).repeat_interleave(G)  # (B*G,)
            logits = policy(contexts).detach()  # π_old is π_θ as it is now: its log-probs are constants of the update
            actions = sample(logits)  # a_i ~ π_old(·|c), (B*G,)
            logp_old, logp_ref = categorical_logp(logits, actions), log_ref[contexts, actions]  # log π_old, log π_ref
            rewards = bandit.pull(contexts, actions) if r_phi is None else r_phi[contexts, actions]  # r_i, (B*G,)
            regret += (bandit.best_mean[contexts] - bandit.means[contexts, actions]).sum()
            if args.advantage == "grpo":
                advantages = group_relative_advantages(rewards.view(B, G), args.scale_rewards == "group").flatten()
            else:  # Â_i = r_i − R̄, R̄ = mean of all earlier rewards (0 at first): one baseline for every prompt
                advantages = rewards - reward_sum / max(run.step, 1)
            reward_sum += rewards.sum()
            run.step += B * G

            # ---- μ gradient steps on this batch; ρ moves away from 1 after the first ----
            for _ in range(args.num_inner_steps):
                logp = categorical_logp(policy(contexts), actions)
                loss = grpo_loss(logp, logp_old, logp_ref, advantages, args.clip_eps, args.beta)
                check_finite(policy_loss=loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            # ---- log ----
            run.recent_return = rewards.mean().item()
            clipfrac = ((logp.detach() - logp_old).exp() - 1.0).abs().gt(args.clip_eps).float().mean()
            run.log({**policy_stats(policy, log_ref, bandit, r_phi), "charts/regret": regret,
                     "charts/mean_reward": run.recent_return, "losses/policy_loss": loss.item(),
                     "diagnostics/clipfrac": clipfrac})  # fmt: skip
            run.progress()
        return run.finish(bandit)


def check_args(args: Args):
    """Refuse, in one line, what cannot work; then check the common fields."""
    check(
        (args.env_id in BANDITS, f"unknown bandit '{args.env_id}'; --env-id is one of {', '.join(BANDITS)}"),
        (args.num_arms >= 2 and min(args.num_contexts, args.num_prompts, args.num_inner_steps, args.hidden) >= 1,
         "--num-arms must be >= 2; --num-contexts, --num-prompts, --num-inner-steps and --hidden >= 1"),
        (args.num_preferences >= 1 and args.rm_steps >= 1, "--num-preferences and --rm-steps must be >= 1"),
        (args.group_size >= 2, "--group-size must be >= 2: a group of one has no mean or std to compare with"),
        (args.total_timesteps >= args.num_prompts * args.group_size,
         f"--total-timesteps is less than one batch (B*G = {args.num_prompts * args.group_size})"),
        (all(0 < x < math.inf for x in (args.learning_rate, args.clip_eps, args.rm_learning_rate)),
         "--learning-rate, --clip-eps and --rm-learning-rate must be positive and finite"),
        (0 <= args.beta < math.inf, f"--beta {args.beta} must be >= 0 and finite"),
        (0 <= args.bandit_seed < 2**32, f"--bandit-seed {args.bandit_seed} must lie in [0, 2^32)"),
    )  # fmt: skip
    check_common(args)


# ── Run plumbing, identical in every script (tests/test_contract.py compares the copies) ────────────────────────
# (grpo_bandit.py has no gym env: its Run.finish, evaluate, evaluate_saved and parse_args are its own.)


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain `std` and a constant bias, as in OpenAI baselines' PPO."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


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


def check_common(args: Args):
    check(
        (0 <= args.seed < 2**32, f"--seed {args.seed} must lie in [0, 2^32)"),
        (args.total_timesteps >= 1 and args.eval_episodes >= 0, "--total-timesteps must be >= 1, --eval-episodes >= 0"),
        (args.threads >= 0, f"--threads {args.threads}: give a number of threads, or 0 for torch's default"),
        (args.exp_name.strip(".") and os.path.basename(args.exp_name) == args.exp_name,
         f"--exp-name {args.exp_name!r} must be a plain name, without '/'"),
        (not os.path.exists(args.log_dir) or os.path.isdir(args.log_dir), f"--log-dir {args.log_dir} is not a folder"),
    )


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

    def finish(self, bandit) -> dict:
        """Check the weights, save them (--save-model), evaluate them (--eval-episodes greedy pulls of the bandit),
        say where it all went."""
        check_finite(**{f"parameter {n}": p for n, p in self.model.named_parameters()})
        self.end_line()
        args, seconds = self.args, time.time() - self.start
        result = {"run_dir": self.dir, "steps": self.step, "sps": self.step / seconds, "eval_return": float("nan")}
        result["model_path"] = self.save() if args.save_model else None
        if args.eval_episodes > 0:
            result["eval_return"] = evaluate(self.model, bandit, args.eval_episodes, args.seed + 10_000)
            self.writer.add_scalar("eval/episodic_return", result["eval_return"], self.step)
            print(f"eval/episodic_return {result['eval_return']:.2f} over {args.eval_episodes} greedy pulls")
        saved = f", model {result['model_path']}" if args.save_model else ""
        skipped = "" if args.eval_episodes else " (evaluation skipped: --eval-episodes 0)"
        print(f"{self.step:,} steps in {seconds:.0f} s{skipped}: run folder {self.dir}{saved}")
        return result


def num_iterations(args: Args, batch: int) -> int:
    """Whole rollouts of `batch` steps in --total-timesteps; says so when that leaves steps out."""
    n = args.total_timesteps // batch
    if n * batch < args.total_timesteps:
        print(f"note: training {n * batch:,} of the {args.total_timesteps:,} steps (whole batches of {batch:,})",
              file=sys.stderr)
    return n


def evaluate(policy: Policy, bandit: Bandit, episodes: int, seed: int) -> float:
    """Mean reward of `episodes` greedy pulls, contexts drawn at random: a bandit episode is one pull, scored by the
    true reward whichever reward trained the policy (the other scripts' `evaluate` runs gymnasium envs)."""
    gen = torch.Generator(bandit.means.device).manual_seed(seed)
    contexts = torch.randint(len(bandit.means), (episodes,), generator=gen, device=bandit.means.device)
    with torch.inference_mode():
        return bandit.pull(contexts, policy(contexts).argmax(-1), gen).mean().item()


def evaluate_saved(args: Args, env_given: bool) -> float:
    """Evaluate a file written by --save-model on its own bandit (rebuilt from its Args) for --eval-episodes greedy
    pulls."""
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
    bandit = Bandit(saved, setup(args))
    model = Policy(len(bandit.means), saved.num_arms, saved.hidden).to(bandit.means.device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        fail(f"{path} does not fit {script}'s networks: {str(e).splitlines()[0]}")
    eval_return = evaluate(model, bandit, args.eval_episodes, args.seed + 10_000)
    print(f"eval/episodic_return {eval_return:.2f} over {args.eval_episodes} greedy pulls of {saved.env_id}")
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
    """Args from the command line. For --env-id contextual, CONTEXTUAL_DEFAULTS replace the one-context defaults,
    and --help shows the values that will run."""
    argv = sys.argv[1:] if argv is None else argv
    default = Args(env_id=flag_value(argv, "--env-id") or Args.env_id)
    if default.env_id == "contextual":
        default = replace(default, **CONTEXTUAL_DEFAULTS)
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
