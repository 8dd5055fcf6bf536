"""REINFORCE: Monte-Carlo policy gradient over batches of complete episodes, for Discrete and Box action spaces.

Williams 1992; Sutton & Barto 2018, sections 13.3-13.4. Each update runs N episodes to their end with π_θ, uses
them once (on-policy: the estimate below only holds for samples of the current π_θ) and ascends

  ∇J(θ) ≈ (1/N) Σ_i Σ_t ∇ log π_θ(a_t|s_t) (G_t − b(s_t)),    G_t = Σ_{t'≥t} γ^{t'−t} r_{t'}   (reward-to-go)

Reward-to-go: a_t cannot change the rewards that came before it (causality), so leaving them out removes noise,
not signal. Baseline: E[∇ log π(a|s) b(s)] = b(s) ∇ Σ_a π(a|s) = b(s) ∇1 = 0, so b leaves the mean unchanged
but lowers the variance. Without one, always-positive rewards (CartPole's +1 a step) push up every action taken,
and only the sizes of the pushes tell good from bad: "variance is the enemy". --baseline none | mean (b = the
batch's mean G_t) | value (b(s) = V_w(s), fitted by regression to G_t: "REINFORCE with baseline", S&B 13.4).

Discounting, "option 1 vs option 2": the exact gradient of the discounted objective from s_0 weights step t by
γ^t on top of G_t (option 2, --weight-by-gamma-t, S&B's γ^t). Common practice (option 1, the default) drops γ^t:
late steps count as much as early ones, and γ only shortens the horizon of G_t, which lowers its variance. That
is not the gradient of any objective (Nota & Thomas 2020), but it learns better in practice.

Discrete actions: categorical (softmax) policy. Box actions: diagonal Gaussian with state-independent log σ,
actions clipped to the bounds when stepped.

Usage: python reinforce.py --env-id CartPole-v1 --baseline none
       python reinforce.py --eval-model runs/<run>/reinforce.pt
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
    total_timesteps: Optional[int] = None  # environment steps to train for (default: 300k Discrete, 1M Box)
    num_envs: int = 16  # N: episodes per batch, one per parallel env
    log_dir: str = "runs"  # TensorBoard runs go to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}
    save_model: bool = False  # save the model, its normalisation statistics and these Args to {run_dir}/{exp_name}.pt
    eval_model: Optional[str] = None  # a file saved by --save-model: evaluate it and exit, no training
    eval_episodes: int = 10  # deterministic evaluation episodes after training (0 skips them)
    capture_video: bool = False  # record the evaluation episodes to {run_dir}/videos
    progress: bool = True  # show a progress line (only when stderr is a terminal)

    # Algorithm
    baseline: Literal["none", "mean", "value"] = "value"  # b(s_t): none, the batch's mean G_t, or a learned V_w(s_t)
    learning_rate: float = 3e-3  # α: Adam step size of π_θ and of V_w
    anneal_lr: bool = True  # decay α linearly to 0: noisy Monte-Carlo gradients need ever smaller steps to settle
    gamma: float = 0.99  # γ: discount factor, typically 0.95-0.999
    weight_by_gamma_t: bool = False  # "option 2": weight step t by γ^t as well (the exact discounted gradient)
    normalize_returns: bool = False  # divide G_t − b(s_t) by its std in each batch (the scale only, not the mean)
    hidden: int = 64  # width of the two hidden layers of the policy and of V_w
    vf_iters: int = 10  # gradient steps of V_w on each batch's G_t (--baseline value): with one, V_w lags far behind


# Defaults that differ by action space, as (Discrete, Box); used where the user did not set the field.
SPACE_DEFAULTS = {"total_timesteps": (300_000, 1_000_000)}


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


def categorical_logp(logits, actions):
    # log π(a|s) = z_a − log Σ_b exp z_b
    return logits.log_softmax(-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def gaussian_logp(mean, log_std, actions):
    # log N(a; μ, σ²), summed over the independent action dimensions
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def mlp(n_in: int, n_out: int, hidden: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_in, hidden)), nn.Tanh(), layer_init(nn.Linear(hidden, hidden)),
                         nn.Tanh(), layer_init(nn.Linear(hidden, n_out), std=out_std))  # fmt: skip


class Agent(nn.Module):
    """The policy π_θ (softmax logits, or the Gaussian mean with a free log σ) and, for --baseline value, a
    separate critic V_w(s) with a linear output (values are unbounded)."""

    def __init__(self, obs_space, act_space, hidden: int, with_value: bool):
        super().__init__()
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        obs_dim, act_dim = obs_space.shape[0], act_space.n if self.discrete else act_space.shape[0]
        self.actor = mlp(obs_dim, act_dim, hidden, out_std=0.01)  # starts near uniform π, or μ ≈ 0
        self.critic = mlp(obs_dim, 1, hidden, out_std=1.0) if with_value else None
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(act_dim))
            self.register_buffer("low", torch.as_tensor(act_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(act_space.high, dtype=torch.float32))

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def logp(self, obs, actions):
        """log π_θ(a|s), computed in the autograd tape so that its gradient is the score ∇ log π_θ(a|s)."""
        out = self.actor(obs)
        return categorical_logp(out, actions) if self.discrete else gaussian_logp(out, self.log_std, actions)

    def sample(self, obs):
        """a ~ π_θ(·|s)."""
        out = self.actor(obs)
        if self.discrete:
            # Gumbel-max trick: argmax_a (z_a − log E_a) with E_a ~ Exp(1) is a sample of softmax(z)
            return (out - torch.empty_like(out).exponential_().log()).argmax(-1)
        return out + self.log_std.exp() * torch.randn_like(out)

    @torch.inference_mode()
    def act(self, raw_obs: np.ndarray) -> np.ndarray:
        """Deterministic action for evaluation: argmax π, or the Gaussian mean clipped to the bounds."""
        obs = torch.as_tensor(raw_obs, dtype=torch.float32, device=self.actor[0].weight.device)
        out = self.actor(obs)
        return (out.argmax(-1) if self.discrete else out.clamp(self.low, self.high)).cpu().numpy()


def run_episodes(envs: gym.vector.VectorEnv, agent: Agent, device: torch.device):
    """One complete episode per env with the current π_θ. The envs step together until the longest episode ends;
    an env whose episode is over keeps stepping (a vector env steps all or none), but those steps are masked out:
    not used and not counted. Taking exactly one episode per env keeps the batch an i.i.d. sample of episodes
    (stopping at the first K episodes to end would favour short ones). Returns numpy arrays, padded to the
    longest episode T: obs (T, N, obs_dim), actions (T, N) or (T, N, act_dim), rewards (T, N), alive (T, N) (1 up
    to each episode's last step), the observation s_T after each episode's last step (N, obs_dim), truncated (N,)."""
    obs, _ = envs.reset()
    alive = np.ones(envs.num_envs, dtype=bool)
    final_obs, cut = np.zeros(obs.shape, dtype=np.float32), np.zeros(envs.num_envs, dtype=bool)
    obs_list, act_list, rew_list, alive_list = [], [], [], []
    while alive.any():
        with torch.inference_mode():
            action = agent.sample(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        obs_list.append(obs)
        act_list.append(action)
        alive_list.append(alive.copy())
        if not agent.discrete:  # the env gets a legal action; π keeps the sampled one for log π(a|s)
            action = np.clip(action, envs.single_action_space.low, envs.single_action_space.high)
        obs, reward, terminated, truncated, info = envs.step(action)
        rew_list.append(reward * alive)
        ended = alive & (terminated | truncated)
        if ended.any():  # SAME_STEP autoreset: obs already starts a new episode; s_T is in final_obs
            final_obs[ended], cut[ended] = np.stack(info["final_obs"][ended]), ~terminated[ended]
            alive &= ~ended
    obs, rewards = np.stack(obs_list, dtype=np.float32), np.stack(rew_list, dtype=np.float32)
    return obs, np.stack(act_list), rewards, np.stack(alive_list), final_obs, cut


def reward_to_go(rewards, gamma: float, bootstrap=None):
    """G_t for each episode (column) of rewards (T, N), which are 0 past its end. bootstrap (T, N), if given, holds
    V(s_{t+1}) at the last step of an episode that a time limit cut short, 0 elsewhere: the task would have gone
    on, so the value of the state reached stands in for the rewards that would have followed."""
    if bootstrap is not None:
        rewards = rewards + gamma * bootstrap
    returns, future = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # G_t = r_t + γ G_{t+1}, i.e. Σ_{t'≥t} γ^{t'−t} r_{t'}: only the rewards that a_t can influence
        future = rewards[t] + gamma * future
        returns[t] = future
    return returns


def baseline_values(kind: str, returns, values, alive):
    """b(s_t): 0, the batch mean of G_t over the steps of its episodes, or V_w(s_t). Any b that does not depend
    on a_t leaves the gradient unbiased; V_w is detached, since b must not carry a gradient of its own."""
    if kind == "mean":
        return returns[alive].mean()
    return values.detach() if kind == "value" else torch.zeros_like(returns)


def pg_weights(returns, b, alive, gamma: float, weight_by_gamma_t: bool, normalize: bool):
    """Ψ_t, the weight of ∇ log π(a_t|s_t): G_t − b(s_t), times γ^t for option 2, optionally divided by its std
    over the batch, and 0 past each episode's end. Constant in θ: only log π carries the gradient."""
    weights = returns - b
    if weight_by_gamma_t:  # option 2: γ^t G_t = Σ_{t'≥t} γ^{t'} r_{t'}, the reward-to-go discounted from s_0
        weights = weights * gamma ** torch.arange(len(weights), device=weights.device).unsqueeze(1)
    if normalize:  # a common scale across batches; subtracting the mean too would be a mean baseline in disguise
        weights = weights / (weights[alive].std() + 1e-8)
    return weights * alive


def policy_gradient_loss(logp, weights):
    """−(1/N) Σ_i Σ_t log π_θ(a_t|s_t) Ψ_t for logp and weights of shape (T, N), N episodes.
    This loss means nothing; its gradient is ∇J. Its value is no measure of the policy (it depends on the batch
    and on b); it exists so that autograd, differentiating only through log π, returns −∇J, the estimate above:
    minimising it is gradient ascent on J."""
    return -(logp * weights).sum(0).mean()


def value_loss(values, returns, alive):
    """Mean of (V_w(s_t) − G_t)² over the steps of the batch's episodes: V_w regresses on the Monte-Carlo G_t."""
    return ((values - returns) ** 2)[alive].mean()


def check_args(args: Args, obs_space, act_space):
    """Fill in the action-space defaults, then refuse what cannot work, in one line."""
    if not isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box)):
        fail(f"needs a Discrete or Box action space; {args.env_id} has {act_space}")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        fail(f"needs flat Box observations; {args.env_id} has {obs_space}")
    for name, pair in SPACE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, pair[isinstance(act_space, gym.spaces.Box)])
    for ok, msg in [
        (args.num_envs >= 1 and args.total_timesteps >= 1, "--num-envs and --total-timesteps must be >= 1"),
        (0 <= args.gamma <= 1, "--gamma must lie in [0, 1]"),
        (args.learning_rate > 0 and args.vf_iters >= 1, "--learning-rate must be positive and --vf-iters >= 1"),
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
    envs.reset(seed=args.seed)  # seeds the envs once; each batch then starts fresh episodes from that stream
    agent = Agent(obs_space, act_space, args.hidden, args.baseline == "value").to(device)
    # fused=True: one kernel for all parameters, ~4x faster steps than the default on CPU
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, fused=True)

    global_step, start = 0, time.time()
    while global_step < args.total_timesteps:
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - global_step / args.total_timesteps)
        batch = run_episodes(envs, agent, device)
        obs, actions, rewards, alive, final_obs, cut = (torch.as_tensor(x, device=device) for x in batch)  # (T, N, ...)
        lengths = alive.sum(0)  # (N,) steps of each episode
        global_step += int(lengths.sum())
        episode_return = float(rewards.sum(0).mean())
        writer.add_scalar("charts/episodic_return", episode_return, global_step)
        writer.add_scalar("charts/episodic_length", float(lengths.float().mean()), global_step)
        show_progress(args, global_step, start, episode_return)

        values, bootstrap = None, None
        if args.baseline == "value":
            values = agent.value(obs)  # V_w(s_t), (T, N)
            if cut.any():  # a time limit is not the end of the task: G_t bootstraps from V_w(s_T)
                bootstrap = torch.zeros_like(rewards)
                with torch.no_grad():
                    bootstrap[lengths[cut] - 1, cut.nonzero().squeeze(1)] = agent.value(final_obs[cut])
        returns = reward_to_go(rewards, args.gamma, bootstrap)  # G_t, (T, N)
        b = baseline_values(args.baseline, returns, values, alive)
        weights = pg_weights(returns, b, alive, args.gamma, args.weight_by_gamma_t, args.normalize_returns)
        pg_loss = policy_gradient_loss(agent.logp(obs, actions), weights)
        loss = pg_loss if values is None else pg_loss + value_loss(values, returns, alive)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for _ in range(args.vf_iters - 1 if values is not None else 0):  # further regression steps of V_w alone
            optimizer.zero_grad(set_to_none=True)
            value_loss(agent.value(obs), returns, alive).backward()
            optimizer.step()

        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        if values is not None:
            writer.add_scalar("losses/value_loss", (loss - pg_loss).item(), global_step)
        # RMS of Ψ_t = G_t − b(s_t): the scale of each term of the gradient estimate, which a baseline shrinks
        # (a std would not show it: subtracting the batch mean leaves the std of G_t unchanged)
        writer.add_scalar("diagnostics/weights_rms", weights[alive].square().mean().sqrt().item(), global_step)
        writer.add_scalar("charts/SPS", global_step / (time.time() - start), global_step)
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
    agent = Agent(*env_spaces(saved.env_id), saved.hidden, saved.baseline == "value")
    agent.load_state_dict(ckpt["model"])
    video_dir = os.path.join(os.path.dirname(args.eval_model), "videos") if args.capture_video else None
    eval_return = evaluate(agent.act, saved.env_id, args.eval_episodes, args.seed + 10_000, video_dir)
    print(f"eval/episodic_return {eval_return:.2f} over {args.eval_episodes} deterministic episodes")
    return eval_return


if __name__ == "__main__":
    cli_args = tyro.cli(Args)
    evaluate_saved(cli_args) if cli_args.eval_model else train(cli_args)
