"""Deep Deterministic Policy Gradient, for bounded Box action spaces.

DDPG (Lillicrap et al. 2016, arXiv:1509.02971) is DQN's critic with a deterministic actor μ_θ(s) in place of the
max over actions. It is off-policy: the critic's target needs only (s, a, r, s', term) from a replay buffer and
μ' at s', never the probability of the stored a, so data from any earlier (noisier) policy can be reused.

  y       = r + γ (1 − term) Q'(s', μ'(s'))                   target actor μ' and critic Q'
  L_Q     = Ê[(Q(s, a) − y)²]
  ∇_θ J   = Ê[∇_a Q(s, a)|_{a=μ_θ(s)} ∇_θ μ_θ(s)]             deterministic policy gradient (Silver et al. 2014)
  a_t     = clip(μ_θ(s_t) + ε, −1, 1),   ε ~ N(0, σ²)          Gaussian exploration noise
  θ'      ← τ θ + (1 − τ) θ'                                  Polyak-averaged targets, for actor and critic

The actor and the targets are updated every d = --policy-frequency steps (delayed, as in TD3). The policy lives
in [−1, 1]^|A| (tanh output) and actions are rescaled affinely to the env's bounds when stepped, so σ is a
fraction of the half-range of each action. Defaults: CleanRL's MuJoCo settings (batch 256, 256×256 nets,
buffer 1e6, 25k random steps, lr 3e-4, σ = 0.1).

Usage: python ddpg.py --env-id Hopper-v5
       python ddpg.py --env-id HalfCheetah-v5 --seed 3
       python ddpg.py --eval-model runs/<run>/ddpg.pt
"""

import copy
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
    threads: int = 2  # torch CPU threads; 2 ran DDPG's 256-wide updates 1.7× faster than 1 on 2 idle cores; 0: default
    env_id: str = "Hopper-v5"  # gymnasium environment id
    total_timesteps: int = 1_000_000  # environment steps to train for
    num_envs: int = 1  # N: parallel environments (one gradient step per N env steps)
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the model, its normalisation statistics and these Args to {run_dir}/{exp_name}.pt
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)

    # Algorithm
    buffer_size: int = 1_000_000  # replay buffer capacity in transitions (FIFO)
    learning_starts: int = 25_000  # uniformly random actions and no updates for this many env steps
    batch_size: int = 256  # transitions per gradient step, sampled uniformly from the buffer
    gamma: float = 0.99  # γ: discount factor, typically 0.98-0.999
    tau: float = 0.005  # τ: Polyak rate of the targets, θ' ← τθ + (1 − τ)θ'; typically 0.005-0.01
    learning_rate: float = 3e-4  # Adam step size of the actor and of the critic
    exploration_noise: float = 0.1  # σ: std of the Gaussian action noise, as a fraction of each action's half-range
    policy_frequency: int = 2  # d: update the actor and the targets every d-th step (delayed, as in TD3; DDPG: 1)
    hidden: int = 256  # width of the two hidden layers of the actor and of the critic


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


def final_observations(next_obs: np.ndarray, info: dict) -> np.ndarray:
    """s_{t+1} of each env's transition: under SAME_STEP autoreset, envs whose episode just ended already return
    the next episode's first observation, and their true last observation is in info["final_obs"]."""
    real_next_obs = next_obs.copy()
    if "final_obs" in info:
        ended = info["_final_obs"]
        real_next_obs[ended] = np.stack(info["final_obs"][ended])
    return real_next_obs


class ReplayBuffer:
    """Experience replay: a preallocated FIFO ring of transitions (s, a, r, s', term), sampled uniformly.
    Only `terminated` is stored: a truncated transition keeps its true s' and bootstraps like any other."""

    def __init__(self, capacity: int, obs_shape: tuple, act_shape: tuple, act_dtype, device: torch.device):
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((capacity, *act_shape), dtype=act_dtype)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.capacity, self.pos, self.size, self.device = capacity, 0, 0, device

    def add(self, obs, actions, rewards, next_obs, terminations):
        """Store one transition per env (arrays with a leading N axis); once full, the oldest are overwritten."""
        idx = (self.pos + np.arange(len(obs))) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.terminations[idx] = next_obs, terminations
        self.pos = (self.pos + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    def sample(self, batch_size: int):
        """A uniform minibatch (with replacement) of the filled slots, as tensors (s, a, r, s', term)."""
        idx = np.random.randint(0, self.size, size=batch_size)
        data = (self.obs, self.actions, self.rewards, self.next_obs, self.terminations)
        return tuple(torch.as_tensor(x[idx], device=self.device) for x in data)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float):
    """θ' ← τ θ + (1 − τ) θ' for every parameter (the notes' ρ = 1 − τ); τ = 1 is a hard copy."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def scale_action(a, low, high):
    """Map a ∈ [−1, 1]^|A| affinely onto the env's box [low, high] (numpy arrays or tensors)."""
    return low + (a + 1.0) * 0.5 * (high - low)


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, n_out))  # fmt: skip


class Actor(nn.Module):
    """μ_θ(s) = tanh(MLP(s)) ∈ [−1, 1]^|A|: deterministic; rescaled to the env's bounds only when stepped."""

    def __init__(self, obs_dim: int, act_space: gym.spaces.Box, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, act_space.shape[0], hidden)
        self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32))

    def forward(self, obs):
        return torch.tanh(self.net(obs))

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: μ(s) without noise, rescaled to the env's bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.low.device)
        return scale_action(self(obs), self.low, self.high).cpu().numpy()


class QNetwork(nn.Module):
    """Q_w(s, a): an MLP of the concatenated state and action, with a linear output (Q-values are unbounded)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs, actions):
        return self.net(torch.cat([obs, actions], dim=-1)).squeeze(-1)


def compute_td_target(rewards, terminations, next_q, gamma: float):
    """y = r + γ (1 − term) Q'(s', μ'(s')). A terminal s' has value 0; a time-limit truncation stored term = 0
    and its true s', so it bootstraps."""
    return rewards + gamma * (1.0 - terminations) * next_q


def critic_loss(q, td_target):
    """L_Q = Ê[(Q(s, a) − y)²], with y held fixed (computed without gradient, from the target networks)."""
    return ((q - td_target) ** 2).mean()


def actor_loss(q_mu):
    """−Ê[Q(s, μ_θ(s))]: minimising it ascends Q along the actor's output. Autograd's chain rule through
    a = μ_θ(s) gives exactly the deterministic policy gradient Ê[∇_a Q(s, a)|_{a=μ_θ(s)} ∇_θ μ_θ(s)]."""
    return -q_mu.mean()


def check_args(args: Args, obs_space, act_space):
    """Refuse what cannot work, in one line."""
    if not isinstance(act_space, gym.spaces.Box) or not np.isfinite(np.r_[act_space.low, act_space.high]).all():
        fail(f"needs a bounded Box action space; {args.env_id} has {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"needs flat Box observations; {args.env_id} has {obs_space}")
    for ok, msg in [
        (args.num_envs >= 1 and args.batch_size >= 1 and args.policy_frequency >= 1,
         "--num-envs, --batch-size and --policy-frequency must be >= 1"),
        (0 <= args.learning_starts < args.total_timesteps,
         f"--learning-starts {args.learning_starts} must lie in [0, --total-timesteps {args.total_timesteps})"),
        (args.buffer_size >= args.num_envs, "--buffer-size must be >= --num-envs"),
        (0 <= args.gamma <= 1 and 0 < args.tau <= 1, "--gamma must lie in [0, 1] and --tau in (0, 1]"),
        (args.learning_rate > 0 and args.exploration_noise >= 0, "--learning-rate must be positive, "
                                                                 "--exploration-noise >= 0"),
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
    obs_dim, act_dim, N = obs_space.shape[0], act_space.shape[0], args.num_envs
    actor = Actor(obs_dim, act_space, args.hidden).to(device)
    qf = QNetwork(obs_dim, act_dim, args.hidden).to(device)
    actor_target, qf_target = copy.deepcopy(actor).requires_grad_(False), copy.deepcopy(qf).requires_grad_(False)
    # fused=True: one kernel for all parameters of an optimizer, several times faster steps on CPU
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate, fused=True)
    q_optimizer = torch.optim.Adam(qf.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_space.shape, act_space.shape, np.float32, device)

    global_step, start, recent_return, stats = 0, time.time(), float("nan"), {}
    obs, _ = envs.reset(seed=args.seed)
    for iteration in range(1, args.total_timesteps // N + 1):
        global_step += N
        if global_step <= args.learning_starts:  # uniform over the box fills the buffer with diverse data
            actions = np.random.uniform(-1.0, 1.0, (N, act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                mu = actor(torch.as_tensor(obs, dtype=torch.float32, device=device))
                actions = (mu + args.exploration_noise * torch.randn_like(mu)).clamp(-1.0, 1.0).cpu().numpy()
        next_obs, rewards, terminations, truncations, info = envs.step(scale_action(actions, act_space.low,
                                                                                    act_space.high))
        # store the true s' of ended episodes, and only `terminated`: a truncated one still bootstraps from s'
        rb.add(obs, actions, rewards, final_observations(next_obs, info), terminations)
        obs = next_obs
        if "episode" in info:
            recent_return = float(info["episode"]["r"][info["_episode"]].mean())
            writer.add_scalar("charts/episodic_return", recent_return, global_step)
            writer.add_scalar("charts/episodic_length", float(info["episode"]["l"][info["_episode"]].mean()),
                              global_step)  # fmt: skip
        if global_step <= args.learning_starts:
            continue

        # ---- critic: regress Q onto y from the target networks ----
        b_obs, b_actions, b_rewards, b_next_obs, b_terminations = rb.sample(args.batch_size)
        with torch.no_grad():
            next_q = qf_target(b_next_obs, actor_target(b_next_obs))
            td_target = compute_td_target(b_rewards, b_terminations, next_q, args.gamma)
        q = qf(b_obs, b_actions)
        qf_loss = critic_loss(q, td_target)
        q_optimizer.zero_grad(set_to_none=True)
        qf_loss.backward()
        q_optimizer.step()
        stats.update({"losses/qf_loss": qf_loss.detach(), "diagnostics/q_values": q.detach().mean()})

        # ---- actor and targets, every d-th step ----
        if iteration % args.policy_frequency == 0:
            qf.requires_grad_(False)  # the actor's loss moves θ only: Q is a constant here (no weight grads)
            pi_loss = actor_loss(qf(b_obs, actor(b_obs)))
            actor_optimizer.zero_grad(set_to_none=True)
            pi_loss.backward()
            actor_optimizer.step()
            qf.requires_grad_(True)
            polyak_update(actor_target, actor, args.tau)
            polyak_update(qf_target, qf, args.tau)
            stats["losses/actor_loss"] = pi_loss.detach()

        if iteration % 100 == 0:  # read the tensors (a host sync on a GPU) only when logging
            for tag, value in stats.items():
                writer.add_scalar(tag, value.item(), global_step)
            writer.add_scalar("charts/SPS", global_step / (time.time() - start), global_step)
            show_progress(args, global_step, start, recent_return)
    envs.close()
    result = {"run_dir": run_dir, "steps": global_step, "sps": global_step / (time.time() - start)}
    return finish(args, actor, writer, run_dir, result)


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
    obs_space, act_space = env_spaces(saved.env_id)
    actor = Actor(obs_space.shape[0], act_space, saved.hidden)
    actor.load_state_dict(ckpt["model"])
    video_dir = os.path.join(os.path.dirname(args.eval_model), "videos") if args.capture_video else None
    eval_return = evaluate(actor.act, saved.env_id, args.eval_episodes, args.seed + 10_000, video_dir)
    print(f"eval/episodic_return {eval_return:.2f} over {args.eval_episodes} deterministic episodes")
    return eval_return


if __name__ == "__main__":
    cli_args = tyro.cli(Args)
    evaluate_saved(cli_args) if cli_args.eval_model else train(cli_args)
