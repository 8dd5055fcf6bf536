"""GRPO (Group Relative Policy Optimization) on multi-armed and contextual bandits.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300) is PPO without a critic: for each prompt q it samples a
group of G answers o_1..o_G from π_old, scores them with the reward model, and uses each answer's reward relative
to its group as the advantage. A bandit is that setting with one-token answers: prompt = context c (the state),
answer = arm a (the action), reward model = the bandit's reward r(c, a). The contextual bandit, where each
context has its own best arm, is the analogue of a set of questions with different right answers.

  Â_i   = (r_i − mean(r_1..r_G)) / (std(r_1..r_G) + eps)      within the group of prompt c; no V(s) to learn
  ρ_i   = π_θ(a_i|c) / π_old(a_i|c)                            importance ratio over μ inner steps per batch
  k3_i  = π_ref(a_i|c)/π_θ(a_i|c) − log(π_ref(a_i|c)/π_θ(a_i|c)) − 1     ≥ 0, unbiased estimate of KL(π_θ‖π_ref)
  J(θ)  = Ê[min(ρ_i Â_i, clip(ρ_i, 1 − ε, 1 + ε) Â_i) − β k3_i]          (the 1/|o_i| token average is 1 here)

--scale-rewards none drops the std: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training",
arXiv:2503.20783) shows that dividing by std(r) up-weights prompts that are too easy or too hard (small std)
and biases the gradient. --advantage reinforce replaces the group mean by the running mean of all earlier
rewards R̄, the gradient-bandit baseline of Sutton & Barto (2018, section 2.8); with --num-inner-steps 1 and
--beta 0 that is REINFORCE with a baseline. A global R̄ is a poor baseline when contexts differ in difficulty,
which the per-prompt group mean fixes: GRPO's point.

Usage: python grpo_bandit.py --env-id gaussian --num-arms 10
       python grpo_bandit.py --env-id contextual --scale-rewards none
       python grpo_bandit.py --eval-model runs/<run>/grpo_bandit.pt
"""

import copy
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # experiment name, part of the run directory's name
    seed: int = 1  # seed of random, numpy, torch and the environments
    torch_deterministic: bool = True  # set torch.backends.cudnn.deterministic
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto picks cuda, then mps, then cpu
    threads: int = 1  # torch CPU threads (1 is fastest for small networks on CPU); 0 keeps torch's default
    env_id: str = "gaussian"  # bandit, built in (no gymnasium env): gaussian, bernoulli or contextual
    total_timesteps: int = 20_000  # arm pulls (samples) to train for
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the model, its normalisation statistics and these Args to {run_dir}/{exp_name}.pt
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)

    # Bandit
    num_arms: int = 10  # K: arms (answers)
    num_contexts: int = 8  # contexts (prompts) of the contextual bandit; the others have one
    bandit_seed: int = 0  # seed of the arm means μ(c, a): the same across --seed, so seeds face the same problem

    # Algorithm
    advantage: Literal["grpo", "reinforce"] = "grpo"  # baseline b of Â = r − b: group mean, or running mean R̄
    scale_rewards: Literal["group", "none"] = "group"  # divide Â by the group's std; none = Dr. GRPO (grpo only)
    num_prompts: int = 8  # B: prompts (contexts) per batch
    group_size: int = 8  # G: answers (arm pulls) per prompt
    num_inner_steps: int = 4  # μ: gradient steps on each batch
    learning_rate: Optional[float] = None  # Adam step size (default: 0.05 for the θ table, 0.01 for the MLP)
    clip_eps: float = 0.2  # ε: clip range of ρ, typically 0.1-0.3
    beta: float = 0.04  # β: weight of the k3 KL penalty to π_ref, typically 0-0.04 (0 drops π_ref)
    hidden: int = 64  # width of the contextual policy's hidden layer


BANDITS = ("gaussian", "bernoulli", "contextual")


def fail(msg: str):
    """Bad input: one line on stderr, exit code 2, nothing written."""
    print(f"error: {os.path.basename(__file__)}: {msg}", file=sys.stderr)
    sys.exit(2)


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


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain `std` and a constant bias, as in OpenAI baselines' PPO."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Bandit:
    """Arm means μ(c, a), shape (contexts, K), fixed by bandit_seed. gaussian: μ ~ N(0, 1), r ~ N(μ, 1) (Sutton &
    Barto's 10-armed testbed); bernoulli: μ ~ U(0, 1), r ~ Bernoulli(μ); contextual: Gaussian arms per context,
    plus a difficulty d_c ~ N(0, 3²) shared by all arms of context c (easy and hard questions)."""

    def __init__(self, kind: str, num_arms: int, num_contexts: int, seed: int, device: torch.device):
        gen = torch.Generator().manual_seed(seed)
        if kind == "bernoulli":
            means = torch.rand((1, num_arms), generator=gen)
        elif kind == "gaussian":
            means = torch.randn((1, num_arms), generator=gen)
        else:  # arms ~ N(0, 1) in each context, plus the context's difficulty d_c ~ N(0, 3²)
            arms = torch.randn((num_contexts, num_arms), generator=gen)
            means = arms + 3 * torch.randn((num_contexts, 1), generator=gen)
        self.bernoulli, self.means = kind == "bernoulli", means.to(device)
        self.best_arm = self.means.argmax(-1)  # a*(c), (contexts,)
        self.best_mean = self.means.max(-1).values  # μ(c, a*(c)), (contexts,)

    def pull(self, contexts, actions, generator: Optional[torch.Generator] = None):
        """Rewards r(c, a) of one pull of arm actions[i] in context contexts[i]."""
        mu = self.means[contexts, actions]
        if self.bernoulli:
            return torch.bernoulli(mu, generator=generator)
        return mu + torch.randn(mu.shape, generator=generator, device=mu.device)


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

    def forward(self, contexts):
        """Logits z(c), (N, K), for a batch of context indices, (N,)."""
        if self.num_contexts == 1:
            return self.theta.expand(len(contexts), -1)
        return self.net(nn.functional.one_hot(contexts, self.num_contexts).float())


def categorical_logp(logits, actions):
    # log π(a|s) = z_a − log Σ_b exp z_b
    return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


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
    """k3 estimate of KL(π_θ‖π_ref) per sample a ~ π_θ (Schulman 2020, "Approximating KL divergence"): its mean is
    unbiased and, unlike k1 = log(π_θ/π_ref), it is never negative and has low variance. Differentiated with the
    samples held fixed, as in the loss, its expected gradient Σ_a (π_θ − π_ref)(a) ∇log π_θ(a) is that of
    KL(π_ref‖π_θ): either way it pulls π_θ back toward π_ref."""
    log_ratio = logp_ref - logp  # log(π_ref/π_θ)
    # k3 = π_ref/π_θ − log(π_ref/π_θ) − 1
    return log_ratio.exp() - log_ratio - 1.0


def grpo_loss(logp, logp_old, logp_ref, advantages, clip_eps: float, beta: float):
    """−J(θ): minimising it is gradient ascent on Ê[min(ρÂ, clip(ρ, 1 − ε, 1 + ε)Â) − β k3]. The samples came from
    π_old, hence the ratio; the min makes the bound pessimistic, so nothing pushes ρ outside [1 − ε, 1 + ε]. Like
    DeepSeekMath, k3 is evaluated on π_old's samples rather than fresh samples of π_θ."""
    ratio = (logp - logp_old).exp()  # ρ = π_θ(a|c) / π_old(a|c), in log space for stability
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    return -(surrogate - beta * k3_kl(logp, logp_ref)).mean()


def evaluate_greedy(policy: Policy, bandit: Bandit, episodes: int, seed: int) -> float:
    """Mean reward of `episodes` one-pull episodes of the greedy policy argmax_a π(a|c), contexts drawn at random
    (the gymnasium-based `evaluate` of the other scripts has no env to run here); printed, and returned."""
    gen = torch.Generator(bandit.means.device).manual_seed(seed)
    contexts = torch.randint(len(bandit.means), (episodes,), generator=gen, device=bandit.means.device)
    with torch.inference_mode():
        actions = policy(contexts).argmax(-1)
    eval_return = bandit.pull(contexts, actions, gen).mean().item()
    print(f"eval/episodic_return {eval_return:.2f} over {episodes} greedy pulls")
    return eval_return


def check_args(args: Args):
    """Fill in the learning rate of the policy type, then refuse what cannot work, in one line."""
    if args.env_id not in BANDITS:
        fail(f"unknown bandit '{args.env_id}'; --env-id is one of {', '.join(BANDITS)}")
    if args.capture_video:
        fail("--capture-video: a bandit has nothing to render")
    if args.learning_rate is None:
        args.learning_rate = 0.01 if args.env_id == "contextual" else 0.05
    batch = args.num_prompts * args.group_size
    for ok, msg in [
        (args.num_arms >= 2 and args.num_contexts >= 1, "--num-arms must be >= 2 and --num-contexts >= 1"),
        (args.group_size >= 2, "--group-size must be >= 2: a group of one has no mean or std to compare with"),
        (args.num_prompts >= 1 and args.num_inner_steps >= 1, "--num-prompts and --num-inner-steps must be >= 1"),
        (args.total_timesteps >= batch,
         f"--total-timesteps {args.total_timesteps} is less than one batch (B*G = {batch})"),
        (args.clip_eps > 0 and args.learning_rate > 0, "--clip-eps and --learning-rate must be positive"),
        (args.beta >= 0 and args.eval_episodes >= 0, "--beta and --eval-episodes must be >= 0"),
    ]:  # fmt: skip
        if not ok:
            fail(msg)


def make_bandit_and_policy(args: Args, device: torch.device):
    num_contexts = args.num_contexts if args.env_id == "contextual" else 1
    bandit = Bandit(args.env_id, args.num_arms, num_contexts, args.bandit_seed, device)
    return bandit, Policy(num_contexts, args.num_arms, args.hidden).to(device)


def train(args: Args) -> dict:
    check_args(args)
    device = setup(args)
    writer, run_dir = make_writer(args)
    bandit, policy = make_bandit_and_policy(args, device)
    reference = copy.deepcopy(policy).requires_grad_(False)  # π_ref: frozen initial policy (the "SFT model")
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate, fused=True)
    all_contexts = torch.arange(len(bandit.means), device=device)

    B, G = args.num_prompts, args.group_size
    num_iterations = args.total_timesteps // (B * G)
    regret = torch.zeros((), device=device)  # Σ over pulls of μ(c, a*(c)) − μ(c, a): expected, not realised, regret
    reward_sum = torch.zeros((), device=device)  # Σ of all rewards so far, for R̄ of --advantage reinforce
    global_step, start = 0, time.time()
    for _ in range(num_iterations):
        # ---- B prompts, G answers each from π_old, scored by the reward model ----
        contexts = torch.randint(len(bandit.means), (B,), device=device).repeat_interleave(G)  # (B*G,)
        with torch.no_grad():  # π_old is π_θ as it is now; its log-probs are constants of the update
            logits = policy(contexts)
            actions = torch.multinomial(logits.softmax(-1), 1).squeeze(-1)  # a_i ~ π_old(·|c), (B*G,)
            logp_old = categorical_logp(logits, actions)
            logp_ref = categorical_logp(reference(contexts), actions)
        rewards = bandit.pull(contexts, actions)  # r_i, (B*G,)
        regret += (bandit.best_mean[contexts] - bandit.means[contexts, actions]).sum()
        if args.advantage == "grpo":
            advantages = group_relative_advantages(rewards.view(B, G), args.scale_rewards == "group").flatten()
        else:  # Â_i = r_i − R̄, R̄ = mean of all earlier rewards (0 at first): one baseline for every prompt
            advantages = rewards - reward_sum / max(global_step, 1)
        reward_sum += rewards.sum()
        global_step += B * G

        # ---- μ gradient steps on this batch; ρ moves away from 1 after the first ----
        for _ in range(args.num_inner_steps):
            logp = categorical_logp(policy(contexts), actions)
            loss = grpo_loss(logp, logp_old, logp_ref, advantages, args.clip_eps, args.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        with torch.no_grad():
            log_probs = policy(all_contexts).log_softmax(-1)  # log π_θ(·|c) for every context, (contexts, K)
            best_arm_prob = log_probs.gather(-1, bandit.best_arm.unsqueeze(-1)).exp().mean()
            clipfrac = ((logp - logp_old).exp() - 1.0).abs().gt(args.clip_eps).float().mean()
            entropy = -(log_probs.exp() * log_probs).sum(-1).mean()  # H(π_θ(·|c)), averaged over contexts
            kl_ref = k3_kl(logp, logp_ref).mean()  # KL(π_θ‖π_ref) estimated on this batch, at the last inner step
        mean_reward = rewards.mean().item()
        for tag, value in [("charts/regret", regret), ("charts/mean_reward", mean_reward),
                           ("charts/best_arm_prob", best_arm_prob), ("losses/policy_loss", loss.item()),
                           ("diagnostics/kl_ref", kl_ref), ("diagnostics/clipfrac", clipfrac),
                           ("diagnostics/entropy", entropy), ("charts/SPS", global_step / (time.time() - start))]:
            writer.add_scalar(tag, float(value), global_step)
        show_progress(args, global_step, start, mean_reward)

    result = {"run_dir": run_dir, "steps": global_step, "sps": global_step / (time.time() - start), "model_path": None}
    if args.save_model:  # the bandit is rebuilt from the saved Args (bandit_seed)
        result["model_path"] = os.path.join(run_dir, f"{args.exp_name}.pt")
        torch.save({"args": asdict(args), "model": policy.state_dict()}, result["model_path"])
    result["eval_return"] = float("nan")
    if args.eval_episodes > 0:
        result["eval_return"] = evaluate_greedy(policy, bandit, args.eval_episodes, args.seed + 10_000)
        writer.add_scalar("eval/episodic_return", result["eval_return"], global_step)
    writer.close()
    return result


def evaluate_saved(args: Args) -> float:
    """Evaluate a file written by --save-model for args.eval_episodes greedy pulls, without training."""
    check_args(args)
    try:
        ckpt = torch.load(args.eval_model, map_location="cpu")
    except (OSError, RuntimeError, KeyError) as e:
        fail(f"cannot load --eval-model {args.eval_model}: {e}")
    bandit, policy = make_bandit_and_policy(Args(**ckpt["args"]), torch.device("cpu"))
    policy.load_state_dict(ckpt["model"])
    return evaluate_greedy(policy, bandit, args.eval_episodes, args.seed + 10_000)


if __name__ == "__main__":
    cli_args = tyro.cli(Args)
    evaluate_saved(cli_args) if cli_args.eval_model else train(cli_args)
