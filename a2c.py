"""Synchronous advantage actor-critic (A2C), for Discrete and Box action spaces.

Mnih et al. 2016 (arXiv:1602.01783). A3C runs asynchronous actor-learners, each applying its own gradients to
shared parameters; A2C is the synchronous version (OpenAI baselines): N envs step in lockstep and one batched
gradient step follows each rollout of n steps: simpler, deterministic, and as good. On-policy: the gradient only
holds for samples of the current π_θ, so each rollout is used once and thrown away (no replay buffer).

  R_t = r_t + γ r_{t+1} + … + γ^{n−1} r_{t+n−1} + γ^n V(s_{t+n})    n-step return, backwards: R ← r_i + γ R
  δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)                    TD error; a terminal state has value 0
  Â_t = Σ_l (γλ)^l δ_{t+l}     GAE(λ): λ = 1 gives R_t − V(s_t), the paper's A(s,a) = Q − V ≈ R − V; λ = 0 gives δ_t
  loss = −Ê[log π_θ(a_t|s_t) Â_t] + c_v Ê[(V_θ(s_t) − R_t)²] − c_e Ê[H(π_θ(·|s_t))],   R_t = Â_t + V(s_t)

Sutton & Barto's one-step actor-critic (section 13.3) is --num-envs 1 --num-steps 1 (then Â_t = δ_t for any λ),
with one more factor I = γ^t (I ← γI) on step t: the exact gradient of the discounted objective from s_0. Like
all deep-RL code we drop it and weight all steps alike (reinforce.py's --weight-by-gamma-t shows both forms).

Discrete actions: categorical (softmax) policy. Box actions: diagonal Gaussian with state-independent log σ,
actions clipped to the bounds when stepped, running observation and reward normalisation. Defaults: RL-Zoo's
CartPole settings (SB3's A2C defaults, 8 envs) for Discrete, its continuous-control settings for Box.

Usage: python a2c.py --env-id CartPole-v1
       python a2c.py --env-id HalfCheetah-v5 --optimizer adam
       python a2c.py --eval-model runs/<run>/a2c.pt
"""

import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import gymnasium as gym
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
    env_id: str = "CartPole-v1"  # gymnasium environment id
    total_timesteps: Optional[int] = None  # environment steps to train for (default: 200k Discrete, 1M Box)
    num_envs: Optional[int] = None  # N: parallel environments (default: 8 Discrete, 4 Box)
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the model, its normalisation statistics and these Args to {run_dir}/{exp_name}.pt
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)

    # Algorithm
    num_steps: Optional[int] = None  # n: steps per env per rollout, n of the n-step return (default: 5 Discrete, 8 Box)
    learning_rate: Optional[float] = None  # α: step size (default: 7e-4 Discrete, 9.6e-4 Box)
    anneal_lr: Optional[bool] = None  # decay the learning rate linearly to 0 (default: off Discrete, on Box)
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"  # RMSprop (decay 0.99, ε 1e-5) as the paper and SB3, or Adam
    gamma: float = 0.99  # γ: discount factor, typically 0.95-0.999
    gae_lambda: Optional[float] = None  # λ: GAE, 1 = n-step returns, 0 = one-step TD (default: 1 Discrete, 0.9 Box)
    ent_coef: float = 0.0  # c_e: entropy bonus coefficient, typically 0-0.01 (the paper used 0.01 on Atari)
    vf_coef: Optional[float] = None  # c_v: value loss coefficient (default: 0.5 Discrete, 0.4 Box)
    max_grad_norm: float = 0.5  # clip the global gradient norm to this
    normalize: Optional[bool] = None  # running observation and reward normalisation (default: off Discrete, on Box)
    hidden: int = 64  # width of the two hidden layers of the actor and of the critic
    log_interval: int = 100  # iterations between logged losses and diagnostics (each log costs time)


# Defaults that differ by action space, as (Discrete, Box); used where the user did not set the field.
SPACE_DEFAULTS = {
    "total_timesteps": (200_000, 1_000_000), "num_envs": (8, 4), "num_steps": (5, 8), "learning_rate": (7e-4, 9.6e-4),
    "anneal_lr": (False, True), "gae_lambda": (1.0, 0.9), "vf_coef": (0.5, 0.4), "normalize": (False, True),
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


# Log-probabilities and entropies in closed form: the numbers torch.distributions gives, without building a
# distribution object for every step (a large share of a small network's step time).
def categorical_logp(logits, actions):
    # log π(a|s) = z_a − log Σ_b exp z_b
    return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits):
    # H = −Σ_a π(a|s) log π(a|s)
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def gaussian_logp(mean, log_std, actions):
    # log N(a; μ, σ²), summed over the independent action dimensions
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def gaussian_entropy(log_std):
    # H = Σ_i (½ log(2πe) + log σ_i)
    return (0.5 + 0.5 * np.log(2 * np.pi) + log_std).sum(-1)


def mlp(n_in: int, n_out: int, hidden: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_in, hidden)), nn.Tanh(), layer_init(nn.Linear(hidden, hidden)),
                         nn.Tanh(), layer_init(nn.Linear(hidden, n_out), std=out_std))  # fmt: skip


class Agent(nn.Module):
    """Separate actor and critic MLPs (a shared trunk makes the two losses fight): the actor outputs softmax
    logits, or the Gaussian mean with a free log σ; the critic V(s) has a linear output, since values are
    unbounded."""

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

    def logp_entropy(self, obs, actions, exact_entropy: bool = True):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch. Without exact_entropy (no entropy bonus, so H is only a
        diagnostic) a softmax policy's H is estimated by −log π_θ(a|s) of the sampled actions, since
        E_a[−log π(a|s)] = H: no extra graph to build and differentiate in every update."""
        out = self.actor(obs)
        if self.discrete:
            logp = categorical_logp(out, actions)
            return logp, categorical_entropy(out) if exact_entropy else -logp.detach()
        log_std = self.log_std.expand_as(out)
        return gaussian_logp(out, log_std, actions), gaussian_entropy(log_std)

    def sample(self, obs):
        """a ~ π_θ(·|s). No log π here: the update recomputes it with its graph, from the same θ."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample of softmax(z)
            return (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped to the bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.critic[0].weight.device)
        out = self.actor(self.normalize(obs))
        return (out.argmax(-1) if self.discrete else out.clamp(self.low, self.high)).cpu().numpy()


def policy_loss(logp, advantages):
    """−Ê[log π_θ(a_t|s_t) Â_t]: minimising it ascends J. Â_t carries no gradient (it is computed from a detached
    V), so the gradient is Ê[∇ log π_θ(a_t|s_t) Â_t], the policy gradient with V(s_t) as baseline."""
    return -(logp * advantages).mean()


def value_loss(values, returns):
    """Ê[(V_θ(s_t) − R_t)²]: regression of the critic on the fixed targets R_t."""
    return ((values - returns) ** 2).mean()


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
        (args.num_envs >= 1 and args.num_steps >= 1, "--num-envs and --num-steps must be >= 1"),
        (args.total_timesteps >= batch, f"--total-timesteps {args.total_timesteps} is less than one rollout "
                                        f"(num_envs*num_steps = {batch})"),
        (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1, "--gamma and --gae-lambda must lie in [0, 1]"),
        (args.learning_rate > 0 and args.max_grad_norm > 0, "--learning-rate and --max-grad-norm must be positive"),
        (args.eval_episodes >= 0 and args.log_interval >= 1, "--eval-episodes must be >= 0, --log-interval >= 1"),
    ]:  # fmt: skip
        if not ok:
            fail(msg)


def train(args: Args) -> dict:
    obs_space, act_space = env_spaces(args.env_id)
    check_args(args, obs_space, act_space)
    device = setup(args)
    writer, run_dir = make_writer(args)
    envs = make_envs(args.env_id, args.num_envs)
    agent = Agent(obs_space, act_space, args.hidden, args.normalize).to(device)
    params = list(agent.parameters())
    if args.optimizer == "rmsprop":  # decay 0.99 and ε = 1e-5, as SB3's A2C and OpenAI baselines
        optimizer = torch.optim.RMSprop(params, lr=args.learning_rate, alpha=0.99, eps=1e-5, foreach=True)
    else:  # fused=True: one kernel for all parameters, ~4x faster steps than the default on CPU
        optimizer = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-5, fused=True)
    ret_rms = RunningMeanStd().to(device) if args.normalize else None
    discounted = np.zeros(args.num_envs)  # per-env discounted return, for the reward scale

    # The rollout is stored as numpy (the env's own type): no tensor work per step beyond choosing the action.
    T, N = args.num_steps, args.num_envs
    num_iterations = args.total_timesteps // (T * N)
    obs_buf = np.zeros((T, N) + obs_space.shape, dtype=np.float32)  # raw s_t, (n, N, obs_dim)
    next_obs_buf = np.zeros_like(obs_buf)  # raw s_{t+1} of the same episode (the true last one where it ended)
    act_buf = np.zeros((T, N) + act_space.shape, dtype=np.float32)  # a_t as sampled, (n, N) or (n, N, act_dim)
    rew_buf, term_buf, done_buf, disc_buf = np.zeros((4, T, N), dtype=np.float32)  # r_t, term_t, done_t, Σγ^k r

    global_step, start, recent_return = 0, time.time(), float("nan")
    obs, _ = envs.reset(seed=args.seed)
    for iteration in range(1, num_iterations + 1):
        lr_now = args.learning_rate * (1.0 - (iteration - 1) / num_iterations if args.anneal_lr else 1.0)
        optimizer.param_groups[0]["lr"] = lr_now

        # ---- collect n steps from each of the N envs with the current π_θ ----
        # Normalisation statistics stay fixed during a rollout, so the update sees the inputs π acted on.
        for t in range(T):
            global_step += N
            with torch.inference_mode():
                action = agent.sample(agent.normalize(torch.as_tensor(obs, dtype=torch.float32, device=device)))
            action = action.cpu().numpy()
            obs_buf[t], act_buf[t] = obs, action
            if not agent.discrete:  # the env gets a legal action; π keeps the sampled one for log π(a|s)
                action = np.clip(action, act_space.low, act_space.high)
            obs, reward, terminated, truncated, info = envs.step(action)
            rew_buf[t], term_buf[t], done_buf[t], next_obs_buf[t] = reward, terminated, terminated | truncated, obs
            if done_buf[t].any():  # SAME_STEP autoreset: obs starts the next episode; its true s_{t+1} is here
                idx = np.flatnonzero(done_buf[t])
                next_obs_buf[t, idx] = np.stack(info["final_obs"][idx])
            if ret_rms is not None:
                discounted = discounted * args.gamma + reward
                disc_buf[t], discounted[done_buf[t] > 0] = discounted, 0.0
            if "episode" in info:
                recent_return = float(info["episode"]["r"][info["_episode"]].mean())
                writer.add_scalar("charts/episodic_return", recent_return, global_step)
                length = float(info["episode"]["l"][info["_episode"]].mean())
                writer.add_scalar("charts/episodic_length", length, global_step)
        show_progress(args, global_step, start, recent_return)

        # ---- one gradient step on the N·n samples ----
        # θ has not changed since the rollout, so V(s_t) and log π(a_t|s_t) computed now, with their graphs, are
        # the values of the rollout: one batched pass instead of one per step.
        raw = torch.as_tensor(np.concatenate([obs_buf, next_obs_buf]), device=device)  # (2n, N, obs_dim)
        all_obs = agent.normalize(raw)
        values, next_values = agent.value(all_obs).split(T)  # V(s_t), V(s_{t+1}): (n, N) each
        rewards = torch.as_tensor(rew_buf, device=device)
        if ret_rms is not None:  # scale r_t by the std of the discounted return, not of r_t (as SB3, CleanRL)
            ret_rms.update(torch.as_tensor(disc_buf, device=device).flatten())
            rewards = (rewards / (ret_rms.var + 1e-8).sqrt()).clamp(-10, 10)
        with torch.no_grad():  # targets are constants: the critic regresses on them, it does not move them
            terms, dones = torch.as_tensor(term_buf, device=device), torch.as_tensor(done_buf, device=device)
            advantages = compute_gae(rewards, values, next_values, terms, dones, args.gamma, args.gae_lambda)
            returns = advantages + values  # R_t = Â_t + V(s_t); with λ = 1 the n-step return
        actions = torch.as_tensor(act_buf, device=device)
        logp, entropy = agent.logp_entropy(all_obs[:T].flatten(0, 1), actions.flatten(0, 1), args.ent_coef > 0)
        pg_loss, v_loss = policy_loss(logp, advantages.flatten()), value_loss(values.flatten(), returns.flatten())
        loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
        optimizer.step()
        if agent.obs_rms is not None:  # new statistics for the next rollout
            agent.obs_rms.update(raw[:T].flatten(0, 1))

        if iteration % args.log_interval == 0:
            for tag, value in [("charts/learning_rate", lr_now), ("losses/policy_loss", pg_loss.item()),
                               ("losses/value_loss", v_loss.item()), ("diagnostics/entropy", entropy.mean().item()),
                               ("diagnostics/explained_variance", explained_variance(values.detach(), returns)),
                               ("diagnostics/advantage_mean", advantages.mean().item()),
                               ("diagnostics/advantage_std", advantages.std().item()),
                               ("charts/SPS", global_step / (time.time() - start))]:  # fmt: skip
                writer.add_scalar(tag, value, global_step)
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
