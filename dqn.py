"""DQN: deep Q-learning with experience replay and a target network, for Discrete action spaces.

Deep Q-Network (Mnih et al. 2015, Nature 518:529), with Double DQN as an option (van Hasselt et al. 2016,
arXiv:1509.06461). Off-policy: ε-greedy actions fill a replay buffer of transitions (s, a, r, s', term), and the
Q-network is fitted to bootstrapped targets on uniform minibatches of it ("mini-batch Q-learning"):

  y        = r + γ (1 − term) max_a' Q_θ'(s', a')                  Q-learning target; a terminal s' has value 0
  y_double = r + γ (1 − term) Q_θ'(s', argmax_a' Q_θ(s', a'))       online net picks a', target net values it
  L(θ)     = Ê[ℓ(Q_θ(s, a) − y)],   ℓ = Huber or squared error;     y is held fixed (no gradient through it)
  θ'       ← τ θ + (1 − τ) θ'  every C gradient steps               τ = 1: the paper's hard copy

Why the pieces: the buffer breaks the correlation of consecutive samples and reuses each one many times (which
an on-policy method cannot: its gradient needs samples of the current policy); the slowly-moving target network
θ' keeps y from chasing Q_θ after every step; Double DQN removes the upward bias of max over noisy estimates.
SARSA would bootstrap from the action actually taken next, r + γ Q(s', a'); Q-learning's max learns the greedy
policy whatever the behaviour policy is, which is what makes replay of old ε-greedy data valid.

Exploration: with probability ε a uniform random action, else argmax_a Q_θ(s, a), so the greedy action has
probability 1 − ε + ε/|A|; ε decays linearly. A time-limit truncation is not a terminal state: its transition
keeps the true last observation as s' and bootstraps. Defaults: RL-Zoo's CartPole-v1 settings (solve in 50k steps).

Usage: python dqn.py --env-id CartPole-v1
       python dqn.py --env-id Acrobot-v1 --double --total-timesteps 100000
       python dqn.py --eval-model runs/<run>/dqn.pt
"""

import math
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
import torch.nn.functional as F
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
    total_timesteps: int = 50_000  # environment steps to train for
    num_envs: int = 1  # N: parallel environments, each stepped once per iteration
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the model, its normalisation statistics and these Args to {run_dir}/{exp_name}.pt
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)

    # Algorithm
    learning_rate: float = 2.3e-3  # Adam step size, typically 1e-4-3e-3
    buffer_size: int = 100_000  # replay buffer capacity in transitions; once full, the oldest are overwritten
    learning_starts: int = 1_000  # environment steps of collection before the first gradient step
    batch_size: int = 64  # transitions per minibatch
    gamma: float = 0.99  # γ: discount factor, typically 0.95-0.999
    train_freq: int = 256  # environment steps (summed over the N envs) between training phases
    gradient_steps: int = 128  # gradient steps in each training phase
    target_update_interval: int = 128  # C: update the target every C gradient steps (128: once per phase)
    tau: float = 1.0  # τ: target update θ' ← τθ + (1 − τ)θ'; 1 = hard copy, ~0.005 with C = 1 for Polyak averaging
    double: bool = False  # Double DQN: a' = argmax of the online network, valued by the target network
    loss: Literal["huber", "mse"] = "huber"  # ℓ: Huber (smooth L1, the paper's error clipping) or squared TD error
    max_grad_norm: float = 10.0  # clip the global gradient norm to this
    start_e: float = 1.0  # ε at step 0 of the linear decay (actions are uniform random until learning_starts)
    end_e: float = 0.04  # ε after the decay, typically 0.01-0.1
    exploration_fraction: float = 0.16  # fraction of total_timesteps over which ε decays linearly to end_e
    hidden: int = 256  # width of the Q-network's two hidden layers


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


def linear_schedule(start: float, end: float, duration: float, t: int) -> float:
    """ε_t: linear from `start` at t = 0 to `end` at t = duration, constant after."""
    return end + (start - end) * max(1.0 - t / duration, 0.0)


class QNetwork(nn.Sequential):
    """Q_θ(s, ·): an MLP from the observation to one value per action; a linear output, as values are unbounded."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int):
        super().__init__(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_actions))  # fmt: skip

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Greedy action argmax_a Q_θ(s, a) for each row of raw_obs."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self[0].weight.device)
        return self(obs).argmax(-1).cpu().numpy()


def epsilon_greedy(greedy_action, obs: np.ndarray, epsilon: float, n_actions: int) -> np.ndarray:
    """Per env, a uniform random action with probability ε (the greedy one included), else greedy_action(obs):
    π(greedy|s) = 1 − ε + ε/|A| and π(a|s) = ε/|A| for every other a. Q is evaluated only if some env is
    greedy."""
    explore = np.random.random(len(obs)) < epsilon
    actions = np.random.randint(n_actions, size=len(obs))
    if not explore.all():
        actions = np.where(explore, actions, greedy_action(obs))
    return actions


def td_target(rewards, terminations, next_q_target, gamma: float, next_q_online=None):
    """y for a batch; next_q_target = Q_θ'(s', ·) and (Double DQN only) next_q_online = Q_θ(s', ·), both (B, |A|).
    Call under no_grad: y is a fixed regression target, not something to move toward Q_θ."""
    if next_q_online is None:
        # y = r + γ (1 − term) max_a' Q_θ'(s', a')
        next_values = next_q_target.max(1).values
    else:
        # y = r + γ (1 − term) Q_θ'(s', argmax_a' Q_θ(s', a')): selecting and evaluating a' with the same noisy
        # estimate is what biases max upward; two networks decouple them.
        next_values = next_q_target.gather(1, next_q_online.argmax(1, keepdim=True)).squeeze(1)
    return rewards + gamma * (1.0 - terminations) * next_values


def td_loss(q_taken, y, kind: str):
    """L(θ) = Ê[ℓ(Q_θ(s, a) − y)] with ℓ(δ) = δ²/2 for |δ| ≤ 1 and |δ| − 1/2 beyond (Huber: its gradient is the
    TD error clipped to [−1, 1], the paper's "error clipping"), or ℓ(δ) = δ² (mse)."""
    return F.smooth_l1_loss(q_taken, y) if kind == "huber" else F.mse_loss(q_taken, y)


def check_args(args: Args, obs_space, act_space):
    """Refuse what cannot work, in one line."""
    if not isinstance(act_space, gym.spaces.Discrete):
        fail(f"needs a Discrete action space; {args.env_id} has {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"needs flat Box observations; {args.env_id} has {obs_space}")
    for ok, msg in [
        (min(args.num_envs, args.batch_size, args.gradient_steps, args.target_update_interval) >= 1,
         "--num-envs, --batch-size, --gradient-steps and --target-update-interval must be >= 1"),
        (args.train_freq >= 1 and args.train_freq % args.num_envs == 0,
         f"--train-freq {args.train_freq} must be a positive multiple of --num-envs {args.num_envs}"),
        (0 <= args.learning_starts <= args.total_timesteps, f"--learning-starts {args.learning_starts} must lie in "
                                                            f"[0, --total-timesteps {args.total_timesteps}]"),
        (args.buffer_size >= args.num_envs, "--buffer-size must be >= --num-envs"),
        (0 <= args.gamma <= 1 and 0 < args.tau <= 1, "--gamma must lie in [0, 1] and --tau in (0, 1]"),
        (0 <= args.end_e <= args.start_e <= 1, "need 0 <= --end-e <= --start-e <= 1"),
        (0 < args.exploration_fraction <= 1, "--exploration-fraction must lie in (0, 1]"),
        (args.learning_rate > 0 and args.max_grad_norm > 0, "--learning-rate and --max-grad-norm must be positive"),
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
    q_network = QNetwork(obs_space.shape[0], act_space.n, args.hidden).to(device)
    target_network = QNetwork(obs_space.shape[0], act_space.n, args.hidden).to(device)
    target_network.load_state_dict(q_network.state_dict())  # θ' = θ at the start
    params = list(q_network.parameters())
    # fused=True: one kernel for all parameters, several times faster steps than the default on CPU
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_space.shape, (), np.int64, device)

    N, decay_steps = args.num_envs, args.exploration_fraction * args.total_timesteps
    num_iterations, num_updates = math.ceil(args.total_timesteps / N), 0
    start, recent_return = time.time(), float("nan")
    obs, _ = envs.reset(seed=args.seed)
    for iteration in range(1, num_iterations + 1):
        global_step = iteration * N
        # ---- act ε-greedily in the N envs, store (s, a, r, s', term) ----
        epsilon = linear_schedule(args.start_e, args.end_e, decay_steps, global_step)
        # until learning starts, a uniform random policy fills the buffer (the paper's "replay start")
        epsilon = 1.0 if global_step < args.learning_starts else epsilon
        actions = epsilon_greedy(q_network.act, obs, epsilon, act_space.n)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        # s' is the true last observation where an episode ended (not the next episode's first), and only
        # `terminated` zeroes the bootstrap: a time-limit truncation keeps γ max Q(s') in its target.
        rb.add(obs, actions, rewards, final_observations(next_obs, info), terminated)
        obs = next_obs
        if "episode" in info:
            recent_return = float(info["episode"]["r"][info["_episode"]].mean())
            writer.add_scalar("charts/episodic_return", recent_return, global_step)
            writer.add_scalar("charts/episodic_length", float(info["episode"]["l"][info["_episode"]].mean()),
                              global_step)  # fmt: skip

        if global_step % args.train_freq == 0 and global_step >= args.learning_starts:
            # ---- a training phase: G gradient steps on uniform minibatches of the buffer ----
            # The buffer does not change during the phase, so one sample of G·B transitions split into G
            # minibatches is the same as G independent samples of B, with one copy instead of G.
            batches = zip(*(x.split(args.batch_size) for x in rb.sample(args.batch_size * args.gradient_steps)))
            losses, q_taken_all = [], []
            for b_obs, b_actions, b_rewards, b_next_obs, b_terminations in batches:
                with torch.no_grad():
                    next_q_online = q_network(b_next_obs) if args.double else None
                    y = td_target(b_rewards, b_terminations, target_network(b_next_obs), args.gamma, next_q_online)
                q_taken = q_network(b_obs).gather(1, b_actions.unsqueeze(1)).squeeze(1)  # Q_θ(s, a), (B,)
                loss = td_loss(q_taken, y, args.loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
                optimizer.step()
                num_updates += 1
                if num_updates % args.target_update_interval == 0:
                    polyak_update(target_network, q_network, args.tau)
                losses.append(loss.detach())
                q_taken_all.append(q_taken.detach())
            for tag, value in [("losses/td_loss", torch.stack(losses).mean().item()),
                               ("diagnostics/q_values", torch.cat(q_taken_all).mean().item()),
                               ("diagnostics/epsilon", epsilon), ("diagnostics/buffer_fill", rb.size / rb.capacity),
                               ("charts/SPS", global_step / (time.time() - start))]:  # fmt: skip
                writer.add_scalar(tag, value, global_step)
        if global_step % args.train_freq == 0 or iteration == num_iterations:
            show_progress(args, global_step, start, recent_return)
    envs.close()
    result = {"run_dir": run_dir, "steps": global_step, "sps": global_step / (time.time() - start)}
    return finish(args, q_network, writer, run_dir, result)


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
    q_network = QNetwork(obs_space.shape[0], act_space.n, saved.hidden)
    q_network.load_state_dict(ckpt["model"])
    video_dir = os.path.join(os.path.dirname(args.eval_model), "videos") if args.capture_video else None
    eval_return = evaluate(q_network.act, saved.env_id, args.eval_episodes, args.seed + 10_000, video_dir)
    print(f"eval/episodic_return {eval_return:.2f} over {args.eval_episodes} deterministic episodes")
    return eval_return


if __name__ == "__main__":
    cli_args = tyro.cli(Args)
    evaluate_saved(cli_args) if cli_args.eval_model else train(cli_args)