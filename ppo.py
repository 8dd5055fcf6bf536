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

Discrete actions: categorical (softmax) policy. Box actions: diagonal Gaussian with state-independent log σ,
actions clipped to the bounds when stepped, running observation and reward normalisation (the observation
statistics are saved with the model). Defaults: RL-Zoo's CartPole settings (Discrete), the paper's MuJoCo
settings (Box).

Usage: python ppo.py --env-id CartPole-v1
       python ppo.py --env-id Hopper-v5 --seed 3
       python ppo.py --eval-model runs/<run>/ppo.pt
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
    total_timesteps: Optional[int] = None  # environment steps to train for (default: 100k Discrete, 1M Box)
    num_envs: Optional[int] = None  # N: parallel environments (default: 8 Discrete, 1 Box)
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the model, its normalisation statistics and these Args to {run_dir}/{exp_name}.pt
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)

    # Algorithm
    num_steps: Optional[int] = None  # T: steps per env in each rollout (default: 32 Discrete, 2048 Box)
    learning_rate: Optional[float] = None  # Adam step size (default: 1e-3 Discrete, 3e-4 Box)
    anneal_lr: bool = True  # decay the learning rate linearly to 0 over training
    gamma: Optional[float] = None  # γ: discount factor, typically 0.98-0.999 (default: 0.98 Discrete, 0.99 Box)
    gae_lambda: Optional[float] = None  # λ: GAE, 0 = one-step TD, 1 = Monte Carlo (default: 0.8 Discrete, 0.95 Box)
    num_minibatches: Optional[int] = None  # minibatches per epoch (default: 1 Discrete, 32 Box)
    update_epochs: Optional[int] = None  # K: passes over each rollout (default: 20 Discrete, 10 Box)
    loss: Literal["clip", "kl"] = "clip"  # policy objective: clipped ratio (PPO-Clip) or adaptive KL penalty (PPO-KL)
    clip_eps: float = 0.2  # ε: clip range of r_t(θ), typically 0.1-0.3
    kl_target: float = 0.01  # d_targ of --loss kl: β halves when KL < d_targ/1.5 and doubles when KL > 1.5 d_targ
    kl_beta: float = 1.0  # β: initial KL-penalty coefficient of --loss kl
    norm_adv: bool = True  # normalise Â_t to zero mean and unit std in each minibatch
    clip_vloss: bool = False  # clip V_θ(s) to within ε of V_old(s) in the value loss
    ent_coef: float = 0.0  # c_e: entropy bonus coefficient, typically 0-0.01
    vf_coef: float = 0.5  # c_v: value loss coefficient
    max_grad_norm: float = 0.5  # clip the global gradient norm to this
    target_kl: Optional[float] = None  # stop the epochs once KL(π_old‖π_θ) exceeds this, typically 0.01-0.05
    normalize: Optional[bool] = None  # running observation and reward normalisation (default: off Discrete, on Box)
    hidden: int = 64  # width of the two hidden layers of the actor and of the critic


# Defaults that differ by action space, as (Discrete, Box); used where the user did not set the field.
SPACE_DEFAULTS = {
    "total_timesteps": (100_000, 1_000_000), "num_envs": (8, 1), "num_steps": (32, 2048),
    "learning_rate": (1e-3, 3e-4), "gamma": (0.98, 0.99), "gae_lambda": (0.8, 0.95),
    "num_minibatches": (1, 32), "update_epochs": (20, 10), "normalize": (False, True),
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
    """Separate actor and critic MLPs ("shared" trunks make the two losses fight): the actor outputs softmax
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

    def logp_entropy(self, obs, actions, with_entropy: bool = True):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch; H is None without with_entropy (no bonus, no graph for it)."""
        out = self.actor(obs)
        if self.discrete:
            return categorical_logp(out, actions), categorical_entropy(out) if with_entropy else None
        log_std = self.log_std.expand_as(out)
        return gaussian_logp(out, log_std, actions), gaussian_entropy(log_std) if with_entropy else None

    def sample(self, obs):
        """a ~ π_θ(·|s) and log π_θ(a|s)."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample of softmax(z)
            actions = (out - torch.empty_like(out).exponential_().log()).argmax(-1)
            return actions, categorical_logp(out, actions)
        actions = out + self.log_std.exp() * torch.randn_like(out)
        return actions, gaussian_logp(out, self.log_std.expand_as(out), actions)

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped to the bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.critic[0].weight.device)
        out = self.actor(self.normalize(obs))
        return (out.argmax(-1) if self.discrete else out.clamp(self.low, self.high)).cpu().numpy()


def clipped_surrogate_loss(logp, logp_old, advantages, clip_eps: float):
    """−L^CLIP: minimising it is gradient ascent on Ê[min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t)]."""
    ratio = (logp - logp_old).exp()  # r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t), in log space for stability
    # The min is a pessimistic bound: where the clip binds, the term is constant in θ (zero gradient), so
    # nothing pushes r_t further out; where it would make the objective worse it still counts.
    return -torch.min(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages).mean()


def approx_kl(logp, logp_old):
    """KL(π_old‖π_θ) ≈ Ê[(r − 1) − log r] over samples of π_old: unbiased and never negative (k3)."""
    log_ratio = logp - logp_old
    return (log_ratio.exp() - 1.0 - log_ratio).mean()


def kl_penalty_loss(logp, logp_old, advantages, beta: float):
    """PPO-KL: minimise −(Ê[r_t Â_t] − β KL(π_old‖π_θ))."""
    return -((logp - logp_old).exp() * advantages).mean() + beta * approx_kl(logp, logp_old)


def value_loss(v, v_old, returns, clip_eps: Optional[float]):
    """Ê[(V_θ(s_t) − R_t)²]; with clip_eps, the larger of that and the error of V clipped to V_old ± ε."""
    loss = (v - returns) ** 2
    if clip_eps is not None:
        loss = torch.max(loss, (v_old + (v - v_old).clamp(-clip_eps, clip_eps) - returns) ** 2)
    return loss.mean()


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
        (args.num_envs >= 1 and args.num_steps >= 1 and args.update_epochs >= 1, "--num-envs, --num-steps and "
                                                                                 "--update-epochs must be >= 1"),
        (args.num_minibatches >= 1 and batch % args.num_minibatches == 0,
         f"num_envs*num_steps = {batch} is not divisible by --num-minibatches {args.num_minibatches}"),
        (args.total_timesteps >= batch, f"--total-timesteps {args.total_timesteps} is less than one rollout "
                                        f"(num_envs*num_steps = {batch})"),
        (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1, "--gamma and --gae-lambda must lie in [0, 1]"),
        (args.clip_eps > 0 and args.learning_rate > 0, "--clip-eps and --learning-rate must be positive"),
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
    # fused=True: one kernel for all parameters, ~4x faster steps than the default on CPU
    params = list(agent.parameters())
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-5, fused=True)
    ret_rms = RunningMeanStd().to(device) if args.normalize else None
    discounted = torch.zeros(args.num_envs, dtype=torch.float64, device=device)  # per-env discounted return

    T, N = args.num_steps, args.num_envs
    batch_size, num_iterations = T * N, args.total_timesteps // (T * N)
    obs_buf = torch.zeros((T, N) + obs_space.shape, device=device)  # normalised s_t, (T, N, obs_dim)
    act_buf = torch.zeros((T, N) + act_space.shape, device=device)  # a_t, (T, N) or (T, N, act_dim)
    logp_buf, val_buf, rew_buf, term_buf, done_buf, trunc_val_buf = torch.zeros((6, T, N), device=device)

    global_step, beta, start, recent_return = 0, args.kl_beta, time.time(), float("nan")
    raw_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
    for iteration in range(1, num_iterations + 1):
        lr_now = args.learning_rate * (1.0 - (iteration - 1) / num_iterations if args.anneal_lr else 1.0)
        optimizer.param_groups[0]["lr"] = lr_now

        # ---- collect T steps from each of the N envs with π_old ----
        for t in range(T):
            global_step += N
            with torch.inference_mode():
                if agent.obs_rms is not None:
                    agent.obs_rms.update(next_obs)
                obs = agent.normalize(next_obs)
                action, logp = agent.sample(obs)
                obs_buf[t], act_buf[t], logp_buf[t], val_buf[t] = obs, action, logp, agent.value(obs)
            env_action = action.cpu().numpy()
            if not agent.discrete:  # the env gets a legal action; π keeps the sampled one for log π(a|s)
                env_action = np.clip(env_action, act_space.low, act_space.high)
            raw_obs, reward, terminated, truncated, info = envs.step(env_action)
            next_obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=device)
            reward = torch.as_tensor(reward, device=device)
            done = torch.as_tensor(terminated | truncated, device=device)
            if ret_rms is not None:  # scale r_t by the std of the discounted return, not of r_t (as SB3, CleanRL)
                discounted = discounted * args.gamma + reward
                ret_rms.update(discounted)
                reward = (reward / (ret_rms.var + 1e-8).sqrt()).clamp(-10, 10)
                discounted[done] = 0.0
            rew_buf[t], term_buf[t], done_buf[t] = reward, torch.as_tensor(terminated, device=device), done
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
        with torch.inference_mode():
            next_vals = torch.cat([val_buf[1:], agent.value(agent.normalize(next_obs)).unsqueeze(0)])
            next_vals = torch.where(done_buf.bool(), trunc_val_buf, next_vals)  # V(s_{t+1}) of the same episode
            advantages = compute_gae(rew_buf, val_buf, next_vals, term_buf, done_buf, args.gamma, args.gae_lambda)
            returns = advantages + val_buf
        trunc_val_buf.zero_()
        b_obs, b_act = obs_buf.flatten(0, 1), act_buf.flatten(0, 1)
        b_logp, b_adv, b_ret, b_val = (x.flatten() for x in (logp_buf, advantages, returns, val_buf))

        # ---- K epochs of minibatch gradient steps ----
        for epoch in range(args.update_epochs):
            # shuffled minibatches; a single one is the whole batch, whose order does not matter (no copies)
            order = torch.randperm(batch_size, device=device) if args.num_minibatches > 1 else slice(None)
            minibatches = order.split(batch_size // args.num_minibatches) if args.num_minibatches > 1 else [order]
            new_logps = []
            for mb in minibatches:
                logp, entropy = agent.logp_entropy(b_obs[mb], b_act[mb], with_entropy=args.ent_coef != 0)
                adv = b_adv[mb]
                if args.norm_adv and len(adv) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                if args.loss == "clip":
                    pg_loss = clipped_surrogate_loss(logp, b_logp[mb], adv, args.clip_eps)
                else:
                    pg_loss = kl_penalty_loss(logp, b_logp[mb], adv, beta)
                v_clip = args.clip_eps if args.clip_vloss else None
                v_loss = value_loss(agent.value(b_obs[mb]), b_val[mb], b_ret[mb], v_clip)
                loss = pg_loss + args.vf_coef * v_loss
                if args.ent_coef != 0:  # skipped at 0: the bonus's graph costs as much as the value loss's
                    loss = loss - args.ent_coef * entropy.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
                optimizer.step()
                new_logps.append(logp.detach())
            if args.target_kl is not None or epoch == args.update_epochs - 1:  # only when it is read
                # log π_θ during this epoch against log π_old, over the whole batch
                logp_new, logp_old = torch.cat(new_logps), b_logp[order]
                kl = approx_kl(logp_new, logp_old).item()
                if args.target_kl is not None and kl > args.target_kl:
                    break  # π_θ has moved far enough from π_old for this batch

        if args.loss == "kl":  # adaptive β (Schulman et al. 2017, section 4)
            beta = beta / 2 if kl < args.kl_target / 1.5 else beta * 2 if kl > args.kl_target * 1.5 else beta
            writer.add_scalar("diagnostics/kl_beta", beta, global_step)
        clipfrac = ((logp_new - logp_old).exp() - 1.0).abs().gt(args.clip_eps).float().mean().item()
        with torch.no_grad():  # H(π_θ(·|s)) of the updated policy over the batch, a diagnostic
            entropy = agent.logp_entropy(b_obs, b_act)[1]
        for tag, value in [("charts/learning_rate", lr_now), ("losses/policy_loss", pg_loss.item()),
                           ("losses/value_loss", v_loss.item()), ("diagnostics/entropy", entropy.mean().item()),
                           ("diagnostics/approx_kl", kl), ("diagnostics/clipfrac", clipfrac),
                           ("diagnostics/explained_variance", explained_variance(b_val, b_ret)),
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
