"""PPO-Clip with GAE(λ), for Discrete and Box action spaces.

Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347). Each iteration collects T steps from N
parallel envs with π_old, estimates advantages with GAE (Schulman et al. 2016, arXiv:1506.02438), then runs K
epochs of minibatch steps on that fixed batch, which grows "slightly off-policy" as θ moves away from θ_old:

  δ_t    = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)          TD error; a terminal state has value 0
  Â_t    = Σ_l (γλ)^l δ_{t+l}        (stops at the episode's end; a time-limit truncation bootstraps from V)
  r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t)                      importance ratio: the data came from π_old
  L^CLIP(θ) = Ê[min(r_t(θ) Â_t, clip(r_t(θ), 1 − ε, 1 + ε) Â_t)]
  loss   = −L^CLIP + c_v Ê[(V_θ(s_t) − R_t)²] − c_e Ê[H(π_θ(·|s_t))],   R_t = Â_t + V_old(s_t)

Importance sampling, E_p[f] = E_q[(p/q) f], lets samples of π_old estimate π_θ's objective, but its variance
explodes as π_θ leaves π_old: clipping removes any incentive to push r_t(θ) outside [1 − ε, 1 + ε]. With
--loss kl the objective is the adaptive KL-penalty variant Ê[r_t(θ) Â_t] − β KL(π_old‖π_θ) of the same paper.

Discrete actions: softmax policy. Box: diagonal Gaussian with state-independent log σ, clipped to the bounds when
stepped, running observation and reward normalisation. Defaults: RL-Zoo's CartPole settings, and for Box envs the
paper's MuJoCo settings (BOX_DEFAULTS; `--env-id Hopper-v5 --help` shows the values that run).

Usage: python ppo.py --env-id Hopper-v5 --seed 3
       python ppo.py --eval-model runs/<run>/ppo.pt
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
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    num_steps: int = 32  # T: steps per env in each rollout (Box: 2048)
    learning_rate: float = 1e-3  # Adam step size (Box: 3e-4)
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over training
    gamma: float = 0.98  # γ: discount factor, typically 0.98-0.999 (Box: 0.99)
    gae_lambda: float = 0.8  # λ: GAE, 0 = one-step TD, 1 = Monte Carlo (Box: 0.95)
    num_minibatches: int = 1  # minibatches per epoch (Box: 32)
    update_epochs: int = 20  # K: passes over each rollout (Box: 10)
    loss: Literal["clip", "kl"] = "clip"  # policy objective: clipped ratio (PPO-Clip) or adaptive KL penalty (PPO-KL)
    clip_eps: float = 0.2  # ε: clip range of r_t(θ), typically 0.1-0.3
    kl_target: float = 0.01  # d_targ of --loss kl: β halves when KL < d_targ/1.5 and doubles when KL > 1.5 d_targ
    kl_beta: float = 1.0  # β: initial KL-penalty coefficient of --loss kl
    norm_adv: bool = True  # normalise Â_t to zero mean and unit std in each minibatch
    clip_vloss: bool = False  # clip V_θ(s) to within ε of V_old(s) in the value loss
    ent_coef: float = 0.0  # c_e: entropy bonus coefficient, typically 0-0.01
    vf_coef: float = 0.5  # c_v: value loss coefficient
    max_grad_norm: float = 0.5  # clip the global gradient norm to this
    target_kl: float = math.inf  # stop the epochs once KL(π_old‖π_θ) exceeds this, typically 0.01-0.05 (inf: never)
    normalize: bool = False  # running observation and reward normalisation (Box: on)
    hidden: int = 64  # width of the two hidden layers of the actor and of the critic

    # The run
    env_id: str = "CartPole-v1"  # gymnasium environment id
    total_timesteps: int = 100_000  # environment steps to train for (Box: 1M)
    num_envs: int = 8  # N: parallel environments (Box: 1)
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


# The paper's MuJoCo settings, used in place of the defaults above when the env's action space is Box.
BOX_DEFAULTS = dict(total_timesteps=1_000_000, num_envs=1, num_steps=2048, learning_rate=3e-4, gamma=0.99,
                    gae_lambda=0.95, num_minibatches=32, update_epochs=10, normalize=True)  # fmt: skip


# ── The estimators and losses, in the order the lecture derives them ──
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


def clipped_surrogate_loss(logp, logp_old, advantages, clip_eps: float):
    """−L^CLIP: minimising it is gradient ascent on Ê[min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t)]."""
    ratio = (logp - logp_old).exp()  # r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t), in log space for stability
    # The min is a pessimistic bound: where the clip binds, the term is constant in θ (zero gradient), so
    # nothing pushes r_t further out; where it would make the objective worse it still counts.
    return -torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages).mean()


def approx_kl(logp, logp_old):
    """KL(π_old‖π_θ) ≈ Ê[(r − 1) − log r] over samples a ~ π_old, r = π_θ/π_old: unbiased, never negative (k3).
    The PPO paper's direction; some lecture notes write KL(π_θ‖π_old) for the same penalty."""
    log_ratio = logp - logp_old
    return (log_ratio.exp() - 1.0 - log_ratio).mean()


def kl_penalty_loss(logp, logp_old, advantages, beta: float):
    """PPO-KL: minimise −(Ê[r_t Â_t] − β KL(π_old‖π_θ))."""
    return -((logp - logp_old).exp() * advantages).mean() + beta * approx_kl(logp, logp_old)


def value_loss(v, v_old, critic_targets, clip_eps: Optional[float]):
    """Ê[(V_θ(s_t) − R_t)²]; with clip_eps, the larger of that and the error of V clipped to V_old ± ε."""
    loss = (v - critic_targets) ** 2
    if clip_eps is not None:
        loss = torch.max(loss, (v_old + (v - v_old).clamp(-clip_eps, clip_eps) - critic_targets) ** 2)
    return loss.mean()


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
    """Separate actor and critic MLPs ("shared" trunks make the two losses fight): the actor outputs softmax
    logits, or the Gaussian mean with a free log σ; the critic V(s) has a linear output (values are unbounded)."""

    def __init__(self, obs_space, act_space, hidden: int, normalize: bool):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim, act_dim = obs_space.shape[0], act_space.n if self.discrete else act_space.shape[0]
        self.obs_rms = RunningMeanStd(obs_dim) if normalize else None
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0)
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)  # starts near uniform π, or μ ≈ 0
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return obs if self.obs_rms is None else self.obs_rms(obs)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def logp_entropy(self, obs, actions, with_entropy: bool = True, out=None):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch, in closed form (a distribution object per call costs a large
        share of a small network's step); H is None without with_entropy (no bonus, no graph for it)."""
        out = self.actor(obs) if out is None else out
        if self.discrete:
            logp = out.log_softmax(-1)  # log π(a|s) = z_a − log Σ_b exp z_b
            entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None  # H = −Σ_a π(a|s) log π(a|s)
            return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), entropy
        log_std = self.log_std.expand_as(out)
        # log N(a; μ, σ²) summed over the independent action dimensions; H = Σ_i (½ log(2πe) + log σ_i)
        logp = (-0.5 * ((actions - out) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        return logp, (0.5 + 0.5 * np.log(2 * np.pi) + log_std).sum(-1) if with_entropy else None

    def sample(self, obs):
        """a ~ π_θ(·|s) and log π_θ(a|s)."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max: argmax_a (z_a − log E_a), E_a ~ Exp(1), samples softmax(z); 2.5× faster than multinomial
            actions = (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        else:
            actions = out + self.log_std.exp() * torch.randn_like(out)
        return actions, self.logp_entropy(obs, actions, with_entropy=False, out=out)[0]

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """What the env is given: a Gaussian sample is clipped to the bounds; log π keeps the sampled one."""
        return (action if self.discrete else action.clamp(self.low, self.high)).cpu().numpy()

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped to the bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.critic[0].weight.device)
        out = self.actor(self.normalize(obs))
        return (out.argmax(-1) if self.discrete else out.clamp(self.low, self.high)).cpu().numpy()


def make_agent(args: Args, obs_space, act_space) -> Agent:
    return Agent(obs_space, act_space, args.hidden, args.normalize)


# ── Training: collect a rollout with π_old → GAE → K epochs of minibatch steps → log ──
class Rollout:
    """T steps of N envs collected with π_old; every tensor is (T, N) unless noted."""

    def __init__(self, T: int, N: int, obs_space, act_space, device):
        self.obs = torch.zeros((T, N) + obs_space.shape, device=device)  # normalised s_t, (T, N, obs_dim)
        self.actions = torch.zeros((T, N) + act_space.shape, device=device)  # a_t, (T, N) or (T, N, act_dim)
        # log π_old(a_t|s_t), V(s_t), r_t, term_t, done_t, V(true last observation) where an episode was truncated
        self.logp, self.values, self.rewards, self.terminations, self.dones, self.trunc_values = torch.zeros(
            (6, T, N), device=device)


def collect_rollout(envs, agent: Agent, buf: Rollout, next_obs: torch.Tensor, reward_scale, run) -> torch.Tensor:
    """Fill `buf` with T steps of every env under a ~ π_old(·|s_t); returns s_T, where the next rollout starts."""
    for t in range(buf.rewards.shape[0]):
        with torch.inference_mode():
            if agent.obs_rms is not None:
                agent.obs_rms.update(next_obs)
            obs = agent.normalize(next_obs)
            action, logp = agent.sample(obs)
            buf.obs[t], buf.actions[t], buf.logp[t], buf.values[t] = obs, action, logp, agent.value(obs)
        raw_obs, reward, terminated, truncated, info = envs.step(agent.env_action(action))
        run.step += envs.num_envs
        run.log_episodes(info)
        next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=buf.obs.device)
        buf.rewards[t] = reward_scale(torch.as_tensor(reward, device=buf.obs.device), terminated | truncated)
        buf.terminations[t], buf.dones[t] = torch.as_tensor(terminated), torch.as_tensor(terminated | truncated)
        if truncated.any():  # a time limit is not a terminal state: bootstrap from V(true last observation)
            idx = np.flatnonzero(truncated)
            final = torch.as_tensor(np.stack(info["final_obs"][idx]), dtype=torch.float32, device=buf.obs.device)
            with torch.inference_mode():
                buf.trunc_values[t, idx] = agent.value(agent.normalize(final))
    return next_obs


def update(agent: Agent, optimizer, b: dict, args: Args, beta: float) -> dict:
    """K epochs of minibatch steps on the flattened batch b; stops early once KL(π_old‖π_θ) > --target-kl."""
    n = len(b["logp_old"])
    for epoch in range(args.update_epochs):
        # a single minibatch is the whole batch, whose order does not matter: no shuffled copies (~5% of a step)
        order = torch.randperm(n, device=b["logp_old"].device) if args.num_minibatches > 1 else slice(None)
        new_logp = []
        for mb in order.split(n // args.num_minibatches) if args.num_minibatches > 1 else [order]:
            # no entropy graph without a bonus: it costs as much as the value loss's (~8% of a step at c_e = 0)
            logp, entropy = agent.logp_entropy(b["obs"][mb], b["actions"][mb], with_entropy=args.ent_coef != 0)
            adv = b["advantages"][mb]
            if args.norm_adv and len(adv) > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            pg_loss = (clipped_surrogate_loss(logp, b["logp_old"][mb], adv, args.clip_eps) if args.loss == "clip"
                       else kl_penalty_loss(logp, b["logp_old"][mb], adv, beta))  # fmt: skip
            v_clip = args.clip_eps if args.clip_vloss else None
            v_loss = value_loss(agent.value(b["obs"][mb]), b["values"][mb], b["critic_targets"][mb], v_clip)
            loss = pg_loss + args.vf_coef * v_loss - (args.ent_coef * entropy.mean() if args.ent_coef else 0.0)
            check_finite(policy_loss=pg_loss, value_loss=v_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], args.max_grad_norm, foreach=True)
            optimizer.step()
            new_logp.append(logp.detach())
        logp_new, logp_old = torch.cat(new_logp), b["logp_old"][order]  # log π_θ during this epoch, vs π_old
        kl = approx_kl(logp_new, logp_old).item()  # KL(π_old‖π_θ)
        if kl > args.target_kl:
            break  # π_θ has moved far enough from π_old for this batch
    clipfrac = ((logp_new - logp_old).exp() - 1.0).abs().gt(args.clip_eps).float().mean()
    return {"losses/policy_loss": pg_loss.item(), "losses/value_loss": v_loss.item(), "diagnostics/approx_kl": kl,
            "diagnostics/clipfrac": clipfrac}  # fmt: skip


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    agent = make_agent(args, obs_space, act_space).to(device)
    # fused=True: one kernel for all parameters, ~4x faster steps than the default on CPU
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    reward_scale = RewardScale(args.num_envs, args.gamma, device) if args.normalize else lambda r, done: r
    buf = Rollout(args.num_steps, args.num_envs, obs_space, act_space, device)
    iterations, beta = num_iterations(args, args.num_steps * args.num_envs), args.kl_beta
    next_obs = torch.as_tensor(envs.reset(seed=args.seed)[0], dtype=torch.float32, device=device)
    with Run(args, agent) as run:
        for iteration in range(iterations):
            lr = args.learning_rate * (1.0 - iteration / iterations if args.anneal_lr else 1.0)
            optimizer.param_groups[0]["lr"] = lr
            # ---- collect T steps from each of the N envs with π_old ----
            next_obs = collect_rollout(envs, agent, buf, next_obs, reward_scale, run)
            run.progress()
            # ---- advantages Â_t and critic targets R_t = Â_t + V_old(s_t), fixed during the update ----
            with torch.inference_mode():
                last_values = agent.value(agent.normalize(next_obs)).unsqueeze(0)
                next_values = torch.cat([buf.values[1:], last_values])  # V(s_{t+1}) ...
                next_values = torch.where(buf.dones.bool(), buf.trunc_values, next_values)  # ... of the same episode
                advantages = compute_gae(buf.rewards, buf.values, next_values, buf.terminations, buf.dones,
                                         args.gamma, args.gae_lambda)  # fmt: skip
            buf.trunc_values.zero_()
            batch = dict(obs=buf.obs.flatten(0, 1), actions=buf.actions.flatten(0, 1), logp_old=buf.logp.flatten(),
                         advantages=advantages.flatten(), values=buf.values.flatten(),
                         critic_targets=(advantages + buf.values).flatten())  # fmt: skip
            # ---- K epochs of minibatch gradient steps ----
            stats = update(agent, optimizer, batch, args, beta)
            if args.loss == "kl":  # adaptive β (Schulman et al. 2017, section 4)
                kl = stats["diagnostics/approx_kl"]
                beta = beta / 2 if kl < args.kl_target / 1.5 else beta * 2 if kl > args.kl_target * 1.5 else beta
                stats["diagnostics/kl_beta"] = beta
            with torch.no_grad():  # ---- log, with H(π_θ(·|s)) of the updated policy over the batch ----
                stats["diagnostics/entropy"] = agent.logp_entropy(batch["obs"], batch["actions"])[1].mean()
            ev = explained_variance(batch["values"], batch["critic_targets"])
            run.log({**stats, "charts/learning_rate": lr, "diagnostics/explained_variance": ev})
        envs.close()
        return run.finish()


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, what cannot work."""
    batch = args.num_envs * args.num_steps
    check(
        check_spaces(args.env_id, obs_space, act_space, gym.spaces.Discrete, gym.spaces.Box),
        (min(args.num_envs, args.num_steps, args.update_epochs, args.hidden, args.num_minibatches) >= 1,
         "--num-envs, --num-steps, --update-epochs, --num-minibatches and --hidden must be >= 1"),
        (batch % args.num_minibatches == 0, f"num_envs*num_steps = {batch} is not divisible by --num-minibatches"),
        (args.total_timesteps >= batch,
         f"--total-timesteps {args.total_timesteps} is less than one rollout (num_envs*num_steps = {batch})"),
        (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1, "--gamma and --gae-lambda must lie in [0, 1]"),
        (all(0 < x < math.inf for x in (args.learning_rate, args.clip_eps, args.max_grad_norm, args.kl_beta,
                                         args.kl_target)) and args.target_kl > 0,
         "--learning-rate, --clip-eps, --max-grad-norm, --kl-beta, --kl-target, --target-kl must be positive (finite)"),
        (math.isfinite(args.ent_coef + args.vf_coef), "--ent-coef and --vf-coef must be finite"),
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
