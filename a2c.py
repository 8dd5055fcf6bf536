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

Discrete actions: softmax policy. Box actions: diagonal Gaussian with state-independent log σ, clipped to the
bounds when stepped, running observation and reward normalisation. Defaults: RL-Zoo's CartPole settings (SB3's
A2C, 8 envs); for a Box env its continuous-control settings (BOX_DEFAULTS; `--env-id Hopper-v5 --help` shows them).

Usage: python a2c.py --env-id CartPole-v1
       python a2c.py --env-id HalfCheetah-v5 --optimizer adam
       python a2c.py --eval-model runs/<run>/a2c.pt
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
    num_steps: int = 5  # n: steps per env in each rollout, the n of the n-step return (Box: 8)
    learning_rate: float = 7e-4  # step size of RMSprop or Adam (Box: 9.6e-4)
    anneal_lr: bool = False  # decay the learning rate linearly to 0 over training (Box: on)
    optimizer: Literal["rmsprop", "adam"] = "rmsprop"  # RMSprop (decay 0.99, ε 1e-5) as the paper and SB3, or Adam
    gamma: float = 0.99  # γ: discount factor, typically 0.95-0.999
    gae_lambda: float = 1.0  # λ: GAE, 1 = n-step returns, 0 = one-step TD (Box: 0.9)
    ent_coef: float = 0.0  # c_e: entropy bonus coefficient, typically 0-0.01 (the paper used 0.01 on Atari)
    vf_coef: float = 0.5  # c_v: value loss coefficient (Box: 0.4)
    max_grad_norm: float = 0.5  # clip the global gradient norm to this
    normalize: bool = False  # running observation and reward normalisation (Box: on)
    hidden: int = 64  # width of the two hidden layers of the actor and of the critic
    log_interval: int = 100  # iterations between logged losses and diagnostics (each log costs time)

    # The run
    env_id: str = "CartPole-v1"  # gymnasium environment id
    total_timesteps: int = 200_000  # environment steps to train for (Box: 1M)
    num_envs: int = 8  # N: parallel environments (Box: 4)
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


# RL-Zoo's continuous-control settings, used in place of the defaults above when the env's action space is Box.
BOX_DEFAULTS = dict(total_timesteps=1_000_000, num_envs=4, num_steps=8, learning_rate=9.6e-4, anneal_lr=True,
                    gae_lambda=0.9, vf_coef=0.4, normalize=True)  # fmt: skip


# ── The estimators and losses, in the order the lecture derives them ──
# compute_gae is the copy shared with ppo.py and trpo.py: its T is the n of a rollout here.
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


def policy_loss(logp, advantages):
    """−Ê[log π_θ(a_t|s_t) Â_t]: minimising it ascends J. Â_t carries no gradient (it is computed from a detached
    V), so the gradient is Ê[∇ log π_θ(a_t|s_t) Â_t], the policy gradient with V(s_t) as baseline."""
    return -(logp * advantages).mean()


def value_loss(values, critic_targets):
    """Ê[(V_θ(s_t) − R_t)²]: regression of the critic on the fixed targets R_t."""
    return ((values - critic_targets) ** 2).mean()


# Log-probabilities and entropies in closed form: the numbers torch.distributions gives, without building a
# distribution object for every step (a large share of a small network's step time).
def categorical_logp(logits, actions):  # log π(a|s) = z_a − log Σ_b exp z_b
    return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits):  # H = −Σ_a π(a|s) log π(a|s)
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def gaussian_logp(mean, log_std, actions):  # log N(a; μ, σ²), summed over the independent action dimensions
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def gaussian_entropy(log_std):  # H = Σ_i (½ log(2πe) + log σ_i)
    return (0.5 + 0.5 * np.log(2 * np.pi) + log_std).sum(-1)


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

    def logp_entropy(self, obs, actions):
        """log π_θ(a|s) and H(π_θ(·|s)) for a batch."""
        out = self.actor(obs)
        if self.discrete:
            return categorical_logp(out, actions), categorical_entropy(out)
        log_std = self.log_std.expand_as(out)
        return gaussian_logp(out, log_std, actions), gaussian_entropy(log_std)

    def sample(self, obs):
        """a ~ π_θ(·|s). No log π here: the update recomputes it with its graph, from the same θ."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample of softmax(z), ~2.5× faster
            # than torch.multinomial on a small batch
            return (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

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


# ── Training: collect n steps of N envs with π_θ → n-step/GAE targets → one gradient step → log ──
class Rollout:
    """n steps of N envs, kept as numpy (the env's own type): no tensor work per step beyond choosing the action.
    Every array is (n, N) unless noted."""

    def __init__(self, n: int, N: int, obs_space, act_space, args: Args, device):
        self.obs = np.zeros((n, N) + obs_space.shape, dtype=np.float32)  # raw s_t, (n, N, obs_dim)
        self.next_obs = np.zeros_like(self.obs)  # raw s_{t+1} of the same episode (the true last one where it ended)
        self.actions = np.zeros((n, N) + act_space.shape, dtype=np.float32)  # a_t as sampled, (n, N) or (n, N, act_dim)
        # r_t, term_t, done_t, and each env's discounted return Σ_k γ^k r_{t−k} of the episode so far at step t
        self.rewards, self.terminations, self.dones, self.discounted = np.zeros((4, n, N), dtype=np.float32)
        # reward scale: std of the discounted return (RewardScale's statistic, updated once per rollout); not saved
        self.ret_rms, self.running = RunningMeanStd().to(device) if args.normalize else None, np.zeros(N)
        self.gamma, self.device = args.gamma, device


def collect_rollout(envs, agent: Agent, buf: Rollout, obs: np.ndarray, run) -> np.ndarray:
    """Fill `buf` with n steps of every env under a ~ π_θ(·|s_t); returns s_n, where the next rollout starts.
    The normalisation statistics stay fixed during a rollout, so the update sees the inputs π acted on."""
    for t in range(len(buf.obs)):
        with torch.inference_mode():
            action = agent.sample(agent.normalize(torch.as_tensor(obs, dtype=torch.float32, device=buf.device)))
        buf.obs[t], buf.actions[t] = obs, action.cpu().numpy()
        obs, reward, terminated, truncated, info = envs.step(agent.env_action(action))
        run.step += envs.num_envs
        run.log_episodes(info)
        buf.rewards[t], buf.terminations[t], buf.dones[t] = reward, terminated, terminated | truncated
        buf.next_obs[t] = obs
        if buf.dones[t].any():  # SAME_STEP autoreset: obs starts the next episode; its true s_{t+1} is here
            idx = np.flatnonzero(buf.dones[t])
            buf.next_obs[t, idx] = np.stack(info["final_obs"][idx])
        if buf.ret_rms is not None:  # each env's discounted return of its episode so far, for the reward scale
            buf.running = buf.running * buf.gamma + reward
            buf.discounted[t], buf.running[buf.dones[t] > 0] = buf.running, 0.0
    return obs


def update(agent: Agent, optimizer, buf: Rollout, args: Args, log: bool) -> Optional[dict]:
    """One gradient step on the n·N samples of the rollout; with `log`, returns the iteration's diagnostics."""
    # θ has not changed since the rollout, so V(s_t) and log π(a_t|s_t) computed now, with their graphs, are
    # the values of the rollout: one batched pass instead of one per step.
    n, tensor = len(buf.obs), lambda x: torch.as_tensor(x, device=buf.device)
    raw = tensor(np.concatenate([buf.obs, buf.next_obs]))  # (2n, N, obs_dim)
    all_obs = agent.normalize(raw)
    values, next_values = agent.value(all_obs).split(n)  # V(s_t), V(s_{t+1}): (n, N) each
    rewards = tensor(buf.rewards)
    if buf.ret_rms is not None:  # r_t / std(discounted return), clipped: the scale of the return (as SB3, CleanRL)
        buf.ret_rms.update(tensor(buf.discounted).flatten())
        rewards = (rewards / (buf.ret_rms.var + 1e-8).sqrt()).clamp(-10, 10)
    with torch.no_grad():  # targets are constants: the critic regresses on them, it does not move them
        advantages = compute_gae(rewards, values, next_values, tensor(buf.terminations), tensor(buf.dones),
                                 args.gamma, args.gae_lambda)  # fmt: skip
        critic_targets = advantages + values  # R_t = Â_t + V(s_t); with λ = 1 the n-step return
    logp, entropy = agent.logp_entropy(all_obs[:n].flatten(0, 1), tensor(buf.actions).flatten(0, 1))
    pg_loss = policy_loss(logp, advantages.flatten())
    v_loss = value_loss(values.flatten(), critic_targets.flatten())
    check_finite(policy_loss=pg_loss, value_loss=v_loss)
    loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], args.max_grad_norm, foreach=True)
    optimizer.step()
    if agent.obs_rms is not None:  # new statistics for the next rollout
        agent.obs_rms.update(raw[:n].flatten(0, 1))
    if log:
        return {"losses/policy_loss": pg_loss.item(), "losses/value_loss": v_loss.item(),
                "diagnostics/entropy": entropy.mean().item(),
                "diagnostics/explained_variance": explained_variance(values.detach(), critic_targets),
                "diagnostics/advantage_mean": advantages.mean().item(),
                "diagnostics/advantage_std": advantages.std().item()}  # fmt: skip


def train(args: Args) -> dict:
    obs_space, act_space, device = prepare(args)
    envs = make_envs(args.env_id, args.num_envs)
    agent = make_agent(args, obs_space, act_space).to(device)
    if args.optimizer == "rmsprop":  # decay 0.99 and ε = 1e-5, as SB3's A2C and OpenAI baselines
        optimizer = torch.optim.RMSprop(agent.parameters(), lr=args.learning_rate, alpha=0.99, eps=1e-5, foreach=True)
    else:  # fused=True: one kernel for all parameters, ~4x faster steps than the default on CPU
        optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    n, N = args.num_steps, args.num_envs
    buf, iterations = Rollout(n, N, obs_space, act_space, args, device), num_iterations(args, n * N)
    obs, _ = envs.reset(seed=args.seed)
    with Run(args, agent) as run:
        for iteration in range(iterations):
            lr = args.learning_rate * (1.0 - iteration / iterations if args.anneal_lr else 1.0)
            optimizer.param_groups[0]["lr"] = lr

            # ---- collect n steps from each of the N envs with the current π_θ ----
            obs = collect_rollout(envs, agent, buf, obs, run)
            run.progress()

            # ---- targets R_t and advantages Â_t, then one gradient step on the n·N samples ----
            stats = update(agent, optimizer, buf, args, log=(iteration + 1) % args.log_interval == 0)

            # ---- log ----
            if stats is not None:
                run.log({**stats, "charts/learning_rate": lr})
        envs.close()
        return run.finish()


def check_args(args: Args, obs_space, act_space):
    """Refuse, in one line, what cannot work."""
    batch = args.num_envs * args.num_steps
    check(
        check_spaces(args.env_id, obs_space, act_space, gym.spaces.Discrete, gym.spaces.Box),
        (min(args.num_envs, args.num_steps, args.hidden, args.log_interval) >= 1,
         "--num-envs, --num-steps, --hidden and --log-interval must be >= 1"),
        (args.total_timesteps >= batch,
         f"--total-timesteps {args.total_timesteps} is less than one rollout (num_envs*num_steps = {batch})"),
        (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1, "--gamma and --gae-lambda must lie in [0, 1]"),
        (all(0 < x < math.inf for x in (args.learning_rate, args.max_grad_norm)),
         "--learning-rate and --max-grad-norm must be positive and finite"),
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
