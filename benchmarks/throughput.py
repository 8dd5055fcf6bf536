"""Steps per second of each script against Stable-Baselines3 / sb3-contrib on
identical settings, and against the env-only random-action rate (the physical limit
of the loop), measured interleaved in one session.

  python benchmarks/throughput.py --scripts ppo.py --repeats 3 \\
      --out benchmarks/results/ppo_vs_sb3.md
  # every script present, at its PLAN settings:
  python benchmarks/throughput.py --repeats 3

For each script, the settings are the script's own defaults (its BOX_DEFAULTS for a
Box env) plus the PLAN flags below; the SB3 counterpart gets the same values mapped
onto its arguments (same networks, batch sizes, epochs, learning rates, torch
threads). Each round runs, for every script, the unmodified script's train(), SB3,
and random actions through the same vector env, each in a fresh process, in an order
that rotates from round to round. Ratios are taken within a round and the median over
rounds is reported. Every figure comes by the wall clock and by CPU time: on a shared
machine the wall clock also measures the other tenants, CPU time barely. For the
off-policy scripts a second table times the learning phase alone, from the first
minibatch to the end. A third gives the wall time from each process's start to the
first moment its training return (mean of the last 10 episodes) reaches the env's
threshold (CartPole-v1 475, InvertedPendulum-v5 900, Pendulum-v1 -200), ours and SB3's
from the same rounds.

Bad input (a count below 1, an unknown script or env, settings a script refuses, an
--out that cannot be written) stops it with one line and exit code 2 before anything
is measured; Ctrl-C stops it with exit code 130, nothing written.
"""

import contextlib
import importlib.util
import io
import multiprocessing as mp
import os
import resource
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    ROOT,
    cli,
    code_state,
    env_threshold,
    header,
    unwritable,
)

# Script -> (env id, extra flags) measured by default. Off-policy runs: 5k random
# steps, then 10k learning steps.
PLAN = {
    "ppo.py": ("CartPole-v1", ()),
    "a2c.py": ("CartPole-v1", ()),
    "dqn.py": ("CartPole-v1", ()),
    "trpo.py": ("CartPole-v1", ()),
    "reinforce.py": ("CartPole-v1", ()),
    "sac_continuous.py": ("Hopper-v5", ("--total-timesteps", "15000")),
    "ddpg.py": (
        "Hopper-v5",
        ("--total-timesteps", "15000", "--learning-starts", "5000"),
    ),
}


def net(a, activation: str) -> dict:
    arch = {"pi": [a.hidden] * 2, "vf": [a.hidden] * 2}
    return {"net_arch": arch, "activation_fn": activation}


def lr(a) -> tuple:
    schedule = "linear" if getattr(a, "anneal_lr", False) else "constant"
    return (schedule, a.learning_rate)


def sb3_ppo(a) -> dict:
    batch = a.num_envs * a.num_steps
    # ours: --target-kl inf = no early stop; SB3: None
    target_kl = None if a.target_kl == float("inf") else a.target_kl
    kwargs = dict(
        n_steps=a.num_steps,
        batch_size=batch // a.num_minibatches,
        n_epochs=a.update_epochs,
        learning_rate=lr(a),
        gamma=a.gamma,
        gae_lambda=a.gae_lambda,
        clip_range=a.clip_eps,
        clip_range_vf=a.clip_eps if a.clip_vloss else None,
        normalize_advantage=a.norm_adv,
        ent_coef=a.ent_coef,
        vf_coef=a.vf_coef,
        max_grad_norm=a.max_grad_norm,
        target_kl=target_kl,
        policy_kwargs=net(a, "tanh") | {"log_std_init": 0.0},
    )
    return dict(algo="PPO", kwargs=kwargs, n_envs=a.num_envs, normalize=a.normalize)


def sb3_a2c(a) -> dict:
    kwargs = dict(
        n_steps=a.num_steps,
        learning_rate=lr(a),
        gamma=a.gamma,
        gae_lambda=a.gae_lambda,
        ent_coef=a.ent_coef,
        vf_coef=a.vf_coef,
        max_grad_norm=a.max_grad_norm,
        use_rms_prop=a.optimizer == "rmsprop",
        rms_prop_eps=1e-5,
        normalize_advantage=getattr(a, "norm_adv", False),
        policy_kwargs=net(a, "tanh"),
    )
    return dict(algo="A2C", kwargs=kwargs, n_envs=a.num_envs, normalize=a.normalize)


def sb3_trpo(a) -> dict:
    import gymnasium as gym

    # sb3-contrib's KL of a diagonal Gaussian is the mean over the |A| action
    # dimensions, ours (and the paper's, Spinning Up's) their sum: its KL, Fisher
    # matrix and hence damping are ours / |A|, so the same step needs its target_kl
    # (the trust-region radius, our --max-kl δ) and cg_damping divided by |A| (Box
    # envs; with ours unscaled it steps ~√|A| farther)
    env = gym.make(a.env_id)
    k = 1
    if isinstance(env.action_space, gym.spaces.Box):
        k = env.action_space.shape[0]
    env.close()
    kwargs = dict(
        n_steps=a.num_steps,
        batch_size=a.num_envs * a.num_steps // a.vf_minibatches,
        learning_rate=lr(a),
        gamma=a.gamma,
        gae_lambda=a.gae_lambda,
        target_kl=a.max_kl / k,
        cg_max_steps=a.cg_iters,
        cg_damping=a.cg_damping / k,
        line_search_shrinking_factor=a.backtrack_coef,
        line_search_max_iter=a.backtrack_iters,
        n_critic_updates=a.vf_epochs,
        normalize_advantage=a.norm_adv,
        policy_kwargs=net(a, "tanh"),
    )
    return dict(algo="TRPO", kwargs=kwargs, n_envs=a.num_envs, normalize=a.normalize)


def sb3_dqn(a) -> dict:
    # Ours counts the target period C in gradient steps, SB3 in env steps: C gradient
    # steps take C · train_freq / gradient_steps env steps.
    target_period = a.target_update_interval * a.train_freq // a.gradient_steps
    kwargs = dict(
        learning_rate=a.learning_rate,
        buffer_size=a.buffer_size,
        learning_starts=a.learning_starts,
        batch_size=a.batch_size,
        tau=a.tau,
        gamma=a.gamma,
        train_freq=a.train_freq // a.num_envs,
        gradient_steps=a.gradient_steps,
        n_steps=a.n_step,
        target_update_interval=max(target_period, 1),
        exploration_fraction=a.exploration_fraction,
        exploration_initial_eps=a.start_e,
        exploration_final_eps=a.end_e,
        max_grad_norm=a.max_grad_norm,
        policy_kwargs={"net_arch": [a.hidden] * 2, "activation_fn": "relu"},
    )
    return dict(algo="DQN", kwargs=kwargs, n_envs=a.num_envs, normalize=False)


def sb3_sac(a) -> dict:
    # SB3 has one learning rate for actor, critics and α; sb3_model gives its critics
    # and α ours (q_lr, beside policy_lr for the actor). SB3 updates the actor every
    # step where ours does `policy_frequency` updates every `policy_frequency` steps:
    # the same number.
    kwargs = dict(
        learning_rate=a.policy_lr,
        buffer_size=a.buffer_size,
        learning_starts=a.learning_starts,
        batch_size=a.batch_size,
        tau=a.tau,
        gamma=a.gamma,
        train_freq=1,
        gradient_steps=1,
        ent_coef="auto" if a.autotune else a.alpha,
        policy_kwargs={"net_arch": [a.hidden] * 2, "activation_fn": "relu"},
    )
    n_envs = a.num_envs
    return dict(algo="SAC", kwargs=kwargs, n_envs=n_envs, normalize=False, q_lr=a.q_lr)


def sb3_ddpg(a) -> dict:
    # SB3's DDPG fixes policy_delay=1; ours updates the actor and the targets every
    # d-th step as TD3 does, so the counterpart is SB3's TD3 reduced to DDPG: one
    # critic, no target-policy smoothing, the same delay d.
    policy = {"net_arch": [a.hidden] * 2, "activation_fn": "relu", "n_critics": 1}
    kwargs = dict(
        learning_rate=a.learning_rate,
        buffer_size=a.buffer_size,
        learning_starts=a.learning_starts,
        batch_size=a.batch_size,
        tau=a.tau,
        gamma=a.gamma,
        train_freq=1,
        gradient_steps=1,
        policy_delay=a.policy_frequency,
        target_policy_noise=0.0,
        target_noise_clip=0.0,
        action_noise=("normal", a.exploration_noise),
        policy_kwargs=policy,
    )
    return dict(algo="TD3", kwargs=kwargs, n_envs=a.num_envs, normalize=False)


COUNTERPARTS = {
    "ppo.py": sb3_ppo,
    "a2c.py": sb3_a2c,
    "trpo.py": sb3_trpo,
    "dqn.py": sb3_dqn,
    "sac_continuous.py": sb3_sac,
    "ddpg.py": sb3_ddpg,
}


def load_script(script: str):
    name = f"bench_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    # inspect (and so tyro's error and help text) finds a class's source through it
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def resolved_args(script: str, env_id: str, flags: tuple[str, ...]):
    """The script's Args for this command line, as its own command line resolves them
    (BOX_DEFAULTS for Box envs)."""
    return load_script(script).parse_args(["--env-id", env_id, *flags])


def script_args(script: str, env_id: str, flags: tuple[str, ...]):
    """(resolved_args, None), or (None, why not) where script is no algorithm script
    here or refuses these settings (its own one line, from its parse_args or the
    checks its train starts with)."""
    if not (script.endswith(".py") and (ROOT / script).is_file()):
        return None, f"no such script: {script!r} (e.g. ppo.py)"
    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text):  # the script's one line, if it refuses
            module = load_script(script)
            if hasattr(module, "parse_args") and hasattr(module, "prepare"):
                a = module.parse_args(["--env-id", env_id, *flags])
                module.prepare(a)
                return a, None
    except SystemExit:
        lines = text.getvalue().strip().splitlines() or [f"{script} refused"]
        return None, lines[-1].removeprefix("error: ")
    return None, f"{script} is no algorithm script (no parse_args and prepare)"


def stamp_first_call(owner, name: str, stamps: dict):
    """Wrap owner.name to record the wall and CPU clocks at its first call in
    stamps["learn"]: on a replay buffer's `sample`, the first minibatch, where an
    off-policy run's learning phase begins."""
    fn = getattr(owner, name)

    def wrapped(*a, **k):
        stamps.setdefault("learn", (time.time(), time.process_time()))
        return fn(*a, **k)

    setattr(owner, name, wrapped)


def learning_rates(steps: int, learning_starts, stamps: dict, end: tuple) -> dict:
    """Steps/s of the learning phase (after learning_starts, from the first minibatch
    to the end), wall and CPU."""
    if learning_starts is None or "learn" not in stamps:
        return {}
    wall, cpu = stamps["learn"]
    n = steps - learning_starts
    return {
        "learn_sps": n / (end[0] - wall),
        "learn_cpu_sps": n / (end[1] - cpu),
        "learn_steps": n,
    }


def printed_eval(fn, *args) -> float:
    """fn(*args), quietly; the X of the `eval/episodic_return X over N episodes` line
    it prints, the line every script prints after an evaluation."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(*args)
    lines = out.getvalue().splitlines()
    evals = [line for line in lines if line.startswith("eval/episodic_return")]
    return float(evals[-1].split()[1])


# The returns that count as solving an env, where its registration has none (Pendulum)
# or a stricter one (InvertedPendulum's 950): those of the seeds suite
THRESHOLDS = {"InvertedPendulum-v5": 900.0, "Pendulum-v1": -200.0}


def logged_episodes(run_dir: str) -> list[tuple[float, float]]:
    """(wall-clock time, return) of each training episode a script logged to
    TensorBoard, in order: the writer stamps each scalar with time.time()."""
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    if "charts/episodic_return" not in events.Tags()["scalars"]:
        return []
    return [(e.wall_time, e.value) for e in events.Scalars("charts/episodic_return")]


def time_to_threshold(side: dict, threshold: float | None) -> float | None:
    """Seconds from the start of the measuring process to the first episode end at
    which the mean of the last 10 training returns reaches threshold (the seeds
    suite's "steps to threshold", by the clock); None where it never does."""
    episodes = side.get("episodes", [])
    if threshold is None or "start" not in side:
        return None
    returns = [r for _, r in episodes]
    for i in range(10, len(episodes) + 1):
        if statistics.mean(returns[i - 10 : i]) >= threshold:
            return episodes[i - 1][0] - side["start"]
    return None


# ---- the three measurements, each in a fresh spawned process. On a shared machine
# the wall clock measures the other tenants as much as the code, so each also reports
# CPU seconds (time.process_time), which they barely move.
def ours_child(
    script: str, env_id: str, flags: tuple[str, ...], seed: int, eval_episodes: int
) -> dict:
    """train() of the unmodified script, as its main would call it; the saved model
    is then evaluated (untimed) through the script's own --eval-model path."""
    module = load_script(script)
    stamps = {}
    if hasattr(module, "ReplayBuffer"):
        stamp_first_call(module.ReplayBuffer, "sample", stamps)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--env-id", env_id, "--seed", str(seed), "--log-dir", tmp]
        argv += ["--exp-name", "throughput", "--no-progress", *flags]
        argv += ["--eval-episodes", "0", "--save-model"]
        a = module.parse_args(argv)
        start = time.time(), time.process_time()
        result = module.train(a)
        end = time.time(), time.process_time()
        wall = end[0] - start[0]
        cpu = end[1] - start[1]
        learning_starts = getattr(a, "learning_starts", None)
        learning = learning_rates(result["steps"], learning_starts, stamps, end)
        episodes = logged_episodes(result["run_dir"])
        evaluation = float("nan")
        if eval_episodes:
            saved = ["--eval-model", result["model_path"]]
            saved += ["--eval-episodes", str(eval_episodes)]
            saved_args = module.parse_args(saved)
            evaluation = printed_eval(module.evaluate_saved, saved_args)
    rates = {"sps": result["steps"] / wall, "cpu_sps": result["steps"] / cpu}
    return rates | {"eval": evaluation, "episodes": episodes} | learning


def sb3_model(spec: dict, env_id: str, seed: int):
    """The SB3 / sb3-contrib model a spec describes, on its own vector env (normalised
    where ours normalises)."""
    import sb3_contrib
    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise
    from stable_baselines3.common.vec_env import VecNormalize

    kwargs = dict(spec["kwargs"])
    if isinstance(kwargs.get("learning_rate"), (tuple, list)):
        kind, value = kwargs["learning_rate"]
        if kind == "linear":
            kwargs["learning_rate"] = lambda progress: progress * value
        else:
            kwargs["learning_rate"] = value
    activations = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
    activation = activations[kwargs["policy_kwargs"]["activation_fn"]]
    kwargs["policy_kwargs"] = dict(kwargs["policy_kwargs"], activation_fn=activation)
    algo = getattr(sb3, spec["algo"], None) or getattr(sb3_contrib, spec["algo"])
    env = make_vec_env(env_id, n_envs=spec["n_envs"], seed=seed)
    if "action_noise" in kwargs:
        # Gaussian noise with std σ × each action's half-range
        half_range = (env.action_space.high - env.action_space.low) / 2
        sigma = kwargs["action_noise"][1] * half_range
        kwargs["action_noise"] = NormalActionNoise(0 * half_range, sigma)
    if spec["normalize"]:
        env = VecNormalize(env, gamma=kwargs["gamma"])
    model = algo("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    if "q_lr" in spec:
        # SB3 sets its one learning rate on every optimizer before each update; the
        # actor keeps it, the critics and α get q_lr, as in ours
        def set_lrs(optimizers):
            for opt in optimizers:
                lr = spec["q_lr"]
                if opt is model.actor.optimizer:
                    lr = kwargs["learning_rate"]
                for group in opt.param_groups:
                    group["lr"] = lr

        model._update_learning_rate = set_lrs
    return model


def sb3_eval_env(spec: dict, env_id: str, seed: int, model):
    """A fresh env for evaluation; where the run normalises, its observations are
    normalised with the training statistics, frozen."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if spec["normalize"]:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = model.get_env().obs_rms
    return eval_env


def sb3_child(
    spec: dict, env_id: str, steps: int, seed: int, eval_episodes: int, threads: int
) -> dict:
    import torch
    from stable_baselines3.common.evaluation import evaluate_policy

    if threads > 0:
        torch.set_num_threads(threads)
    # like ours: env and model set-up, then the training loop
    start = time.time(), time.process_time()
    model = sb3_model(spec, env_id, seed)
    stamps = {}
    if hasattr(model, "replay_buffer"):
        stamp_first_call(model.replay_buffer, "sample", stamps)
    model.learn(steps)
    end = time.time(), time.process_time()
    wall = end[0] - start[0]
    cpu = end[1] - start[1]
    steps_done = model.num_timesteps
    # each env's Monitor: episode returns and their end times since its t_start
    venv = model.get_env()
    episodes = sorted(
        (t_start + t, r)
        for t_start, times, returns in zip(
            venv.get_attr("t_start"),
            venv.env_method("get_episode_times"),
            venv.env_method("get_episode_rewards"),
        )
        for t, r in zip(times, returns)
    )
    learning_starts = spec["kwargs"].get("learning_starts")
    learning = learning_rates(steps_done, learning_starts, stamps, end)
    evaluation = float("nan")
    if eval_episodes:
        eval_env = sb3_eval_env(spec, env_id, seed, model)
        mean, _ = evaluate_policy(
            model, eval_env, n_eval_episodes=eval_episodes, deterministic=True
        )
        evaluation = float(mean)
    rates = {"sps": steps_done / wall, "cpu_sps": steps_done / cpu}
    return rates | {"eval": evaluation, "episodes": episodes} | learning


def env_child(env_id: str, num_envs: int, steps: int, seed: int) -> dict:
    """Random actions through the vector env our scripts use: N envs, same-step
    autoreset, episode statistics."""
    import gymnasium as gym

    autoreset = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
    envs = gym.make_vec(
        env_id, num_envs, vectorization_mode="sync", vector_kwargs=autoreset
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    steps = steps // num_envs * num_envs
    wall, cpu = time.time(), time.process_time()
    for _ in range(steps // num_envs):
        envs.step(envs.action_space.sample())
    return {
        "sps": steps / (time.time() - wall),
        "cpu_sps": steps / (time.process_time() - cpu),
    }


class MeasurementFailed(Exception):
    """A measurement's process failed: main says so in one line."""


def with_process_cpu(fn, args) -> dict:
    try:
        result = fn(*args)
    except SystemExit as e:  # the pool would wait for a result forever
        raise RuntimeError(f"exit code {e.code}") from None
    # the whole process: start-up, imports, evaluation
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return result | {"cpu": usage.ru_utime + usage.ru_stime}


def spawned(fn, *args) -> dict:
    """fn(*args) in a fresh Python process. wall and cpu: the whole process, start-up
    and imports included."""
    start = time.time()
    # A terminal's Ctrl-C reaches this process alone, which then stops the child: the
    # child starts with Ctrl-C ignored, then leaves the terminal's process group.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pool = mp.get_context("spawn").Pool(1, initializer=os.setsid)
    finally:
        signal.signal(signal.SIGINT, previous)
    with pool:
        try:
            result = pool.apply(with_process_cpu, (fn, args))
        except Exception as e:  # raised in the child, raised again here
            what = f"{fn.__name__}{args[:2]}"
            raise MeasurementFailed(f"{what} failed: {type(e).__name__}: {e}") from e
    return result | {"wall": time.time() - start, "start": start}


@dataclass
class Args:
    scripts: tuple[str, ...] = ()
    """scripts to measure (default: every script in PLAN that is in the checkout)"""
    env_id: Optional[str] = None
    """measure every script on this env instead of its PLAN env"""
    flags: str = ""
    """flags for our scripts (mapped to SB3 too): --flags='--total-timesteps 20000'"""
    repeats: int = 3
    """rounds of (ours, SB3, env-only) per script"""
    seed: int = 1
    """seed of round 1; round r uses seed + r − 1"""
    eval_episodes: int = 10
    """deterministic evaluation episodes at the end of each training run"""
    env_steps: int = 50_000
    """steps of the env-only measurement (capped at the training budget)"""
    out: str = "benchmarks/results/throughput.md"
    """the markdown result"""


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: benchmarks/throughput.py: {msg}", file=sys.stderr)
        sys.exit(2)


def check_args(args: Args):
    """Refuse settings no measurement can be made with, before measuring."""
    check(1 <= args.repeats <= 1000, f"--repeats {args.repeats}: use 1 to 1000")
    check(0 <= args.seed < 2**31, f"--seed {args.seed}: use 0 to 2^31 - 1")
    episodes = args.eval_episodes
    check(0 <= episodes <= 1000, f"--eval-episodes {episodes}: use 0 to 1000")
    check(args.env_steps >= 1, f"--env-steps {args.env_steps}: use 1 or more")
    check(args.env_id is None or args.env_id.strip(), "--env-id '': name an env")
    try:
        shlex.split(args.flags)
    except ValueError as e:  # an unclosed quote
        check(False, f"--flags {args.flags!r}: {e}; close the quote")
    problem = unwritable(args.out, folder=False)
    check(problem is None, f"--out {args.out!r}: {problem}")


def median(xs: list) -> float:
    return statistics.median(xs) if xs else float("nan")


def measure(args: Args) -> list[dict]:
    scripts = args.scripts or tuple(s for s in PLAN if (ROOT / s).exists())
    plans = []
    for script in scripts:
        env_id, flags = PLAN.get(script, ("CartPole-v1", ()))
        env_id = args.env_id or env_id
        flags = tuple(flags) + tuple(shlex.split(args.flags))
        a, refusal = script_args(script, env_id, flags)
        check(a is not None, refusal)
        need = getattr(a, "num_envs", 1)  # one step of each env
        enough = min(args.env_steps, a.total_timesteps) >= need
        check(enough, f"{script}: --env-steps and its budget must be >= {need}")
        sb3 = COUNTERPARTS[script](a) if script in COUNTERPARTS else None
        plan = dict(script=script, env_id=env_id, flags=flags, args=a, sb3=sb3)
        plans.append(plan | {"rounds": []})
    for r in range(args.repeats):
        seed = args.seed + r
        for p in plans:
            a = p["args"]
            steps = a.total_timesteps
            num_envs = getattr(a, "num_envs", 1)
            env_steps = min(args.env_steps, steps)
            script, env_id, episodes = p["script"], p["env_id"], args.eval_episodes
            jobs = {
                "ours": (ours_child, script, env_id, p["flags"], seed, episodes),
                "env": (env_child, env_id, num_envs, env_steps, seed),
            }
            if p["sb3"]:
                sb3 = (p["sb3"], env_id, steps, seed, episodes, a.threads)
                jobs["sb3"] = (sb3_child, *sb3)
            # rotate who goes first
            names = list(jobs)
            first = r % len(names)
            order = names[first:] + names[:first]
            result = {name: spawned(*jobs[name]) for name in order}
            p["rounds"].append(result)
            rates = [
                f"{k} {v['sps']:,.0f} steps/s ({v['cpu_sps']:,.0f}/CPU-s)"
                for k, v in result.items()
            ]
            print(f"round {r + 1} {script} {env_id}: " + ", ".join(rates), flush=True)
    return plans


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_head(*columns: str) -> list[str]:
    return [row(*columns), "|---" * len(columns) + "|"]


INTRO = (
    "Each round runs, per script, our script's `train()`, SB3 with the same settings "
    "and the env alone, each in a fresh process, in an order that rotates from round "
    "to round. Ratios are taken within a round, then the median over rounds; other "
    "figures are medians. Steps/s: environment steps over the time of set-up and "
    "training (ours: `train()`; SB3: building the env and model, then `learn`), by the "
    "wall clock and by the CPU time of that process. On a shared machine other tenants "
    "slow the wall clock by a factor that changes from minute to minute; CPU time "
    "moves much less, but on a crowded VM it too runs above an idle core's (cache "
    "sharing, host contention), so compare the ratios rather than the absolute "
    "figures. Env-only: random actions through the same vector env (SyncVectorEnv, "
    "same-step autoreset, episode statistics).\n"
)
LEARNING_PHASE = (
    "Steps/s after the random-action warm-up: environment steps after "
    "`learning_starts`, over the time from the first minibatch drawn from the replay "
    "buffer to the end of training, by the wall clock and by CPU time: the rate of "
    "learning itself, which the steps/s above blend with the much faster warm-up.\n"
)
TIME_TO_SOLVE = (
    "Seconds from the start of the measuring process (Python start-up and imports "
    "included) to the first episode end at which the mean of the last 10 training "
    "returns reaches the threshold: the median over the rounds that reached it, "
    "and how many did; the ratio (below 1: ours is sooner) is taken within each "
    "round where both did. Ours: "
    "the times TensorBoard stamped on `charts/episodic_return`; SB3: its Monitor's "
    "episode times.\n"
)
NAN_SIDE = {key: float("nan") for key in ("sps", "cpu_sps", "wall", "cpu", "eval")}


def markdown(plans: list[dict], args: Args, code: str | None = None) -> str:
    speed = table_head(
        "script",
        "env",
        "steps",
        "SB3",
        "ours steps/s",
        "SB3 steps/s",
        "ours ÷ SB3",
        "ours steps/CPU-s",
        "SB3 steps/CPU-s",
        "ours ÷ SB3 (CPU)",
        "env-only steps/CPU-s",
        "ours ÷ env-only (CPU)",
    )
    whole = table_head(
        "script",
        "env",
        "ours eval",
        "SB3 eval",
        "ours process wall (s)",
        "ours process CPU (s)",
        "SB3 process wall (s)",
        "SB3 process CPU (s)",
    )
    learn = table_head(
        "script",
        "env",
        "learning steps",
        "ours steps/s",
        "SB3 steps/s",
        "ours ÷ SB3",
        "ours steps/CPU-s",
        "SB3 steps/CPU-s",
        "ours ÷ SB3 (CPU)",
    )
    solved = table_head(
        "script",
        "env",
        "threshold",
        "ours (s)",
        "SB3 (s)",
        "ours ÷ SB3",
    )
    detail = table_head(
        "script",
        "round",
        "order",
        "ours steps/s",
        "SB3 steps/s",
        "ours steps/CPU-s",
        "SB3 steps/CPU-s",
        "env-only steps/CPU-s",
        "ours wall / CPU (s)",
        "SB3 wall / CPU (s)",
        "ours eval",
        "SB3 eval",
    )
    for p in plans:
        rounds = p["rounds"]
        threshold = env_threshold(p["env_id"])

        def num(side, key, fmt="{:,.0f}"):
            xs = [r[side][key] for r in rounds if side in r]
            return fmt.format(median(xs)) if xs else "—"

        def ratio(side, key):
            # within each round, then the median over rounds
            xs = [r["ours"][key] / r[side][key] for r in rounds if side in r]
            return f"**{median(xs):.2f}×**" if xs else "—"

        def evals(side):
            xs = [r[side]["eval"] for r in rounds if side in r]
            if not xs:
                return "—"
            solved = ""
            if threshold is not None:
                reached = sum(x >= threshold for x in xs)
                solved = f" ({reached}/{len(xs)} ≥ {threshold:g})"
            return f"{statistics.mean(xs):.1f}{solved}"

        def seconds_to(side, goal):
            # the median over the rounds that reached it, and how many did
            xs = [time_to_threshold(r[side], goal) for r in rounds if side in r]
            hit = [x for x in xs if x is not None]
            if not xs:
                return "—", []
            text = f"{median(hit):.1f} ({len(hit)}/{len(xs)})" if hit else "not reached"
            return text, xs

        script, env_id = p["script"], p["env_id"]
        name = p["sb3"]["algo"] if p["sb3"] else "none"
        goal = THRESHOLDS.get(env_id, threshold)
        if goal is not None:
            ours_text, ours_xs = seconds_to("ours", goal)
            sb3_text, sb3_xs = seconds_to("sb3", goal)
            # within each round where both reached it, then the median
            pairs = [o / b for o, b in zip(ours_xs, sb3_xs) if None not in (o, b)]
            solved.append(
                row(
                    script,
                    env_id,
                    f"{goal:g}",
                    ours_text,
                    sb3_text,
                    f"**{median(pairs):.2f}×**" if pairs else "—",
                )
            )
        speed.append(
            row(
                script,
                env_id,
                f"{p['args'].total_timesteps:,}",
                name,
                num("ours", "sps"),
                num("sb3", "sps"),
                ratio("sb3", "sps"),
                num("ours", "cpu_sps"),
                num("sb3", "cpu_sps"),
                ratio("sb3", "cpu_sps"),
                num("env", "cpu_sps"),
                ratio("env", "cpu_sps"),
            )
        )
        both_learn = [
            "learn_sps" in r["ours"] and "learn_sps" in r.get("sb3", {}) for r in rounds
        ]
        if any(both_learn):
            learn.append(
                row(
                    script,
                    env_id,
                    num("ours", "learn_steps"),
                    num("ours", "learn_sps"),
                    num("sb3", "learn_sps"),
                    ratio("sb3", "learn_sps"),
                    num("ours", "learn_cpu_sps"),
                    num("sb3", "learn_cpu_sps"),
                    ratio("sb3", "learn_cpu_sps"),
                )
            )
        whole.append(
            row(
                script,
                env_id,
                evals("ours"),
                evals("sb3"),
                num("ours", "wall", "{:.1f}"),
                num("ours", "cpu", "{:.1f}"),
                num("sb3", "wall", "{:.1f}"),
                num("sb3", "cpu", "{:.1f}"),
            )
        )
        for i, r in enumerate(rounds):
            o, b, e = r["ours"], r.get("sb3", NAN_SIDE), r["env"]
            detail.append(
                row(
                    script,
                    i + 1,
                    " → ".join(r),
                    f"{o['sps']:,.0f}",
                    f"{b['sps']:,.0f}",
                    f"{o['cpu_sps']:,.0f}",
                    f"{b['cpu_sps']:,.0f}",
                    f"{e['cpu_sps']:,.0f}",
                    f"{o['wall']:.1f} / {o['cpu']:.1f}",
                    f"{b['wall']:.1f} / {b['cpu']:.1f}",
                    f"{o['eval']:.1f}",
                    f"{b['eval']:.1f}",
                )
            )
    settings = []
    for p in plans:
        if not p["sb3"]:
            continue
        sb3 = p["sb3"]
        line = f"- `{p['script']}` {' '.join(p['flags'])} ↔ SB3 `{sb3['algo']}`, "
        line += f"n_envs={sb3['n_envs']}, normalize={sb3['normalize']}, {sb3['kwargs']}"
        if "q_lr" in sb3:
            line += f", critics' and α's learning rate {sb3['q_lr']}"
        settings.append(line)
    title = "Throughput: our scripts vs Stable-Baselines3 and the env-only limit"
    seeds = ", ".join(str(args.seed + r) for r in range(args.repeats))
    seed_note = f"{args.repeats} round(s), seeds {seeds}"
    seed_note += " (one training run per side per round)"
    learning_phase = []
    if len(learn) > 2:
        learning_phase = [
            "## Learning phase (off-policy scripts)\n",
            LEARNING_PHASE,
            *learn,
            "",
        ]
    whole_runs = (
        f"Eval: the final deterministic evaluation ({args.eval_episodes} episodes), "
        "mean over rounds and how many rounds reached the env's threshold. Process "
        "wall and CPU: the whole process, Python start-up, imports, training and "
        "evaluation; on an idle machine a single-threaded run's wall time is about its "
        "CPU time.\n"
    )
    time_to_solve = []
    if len(solved) > 2:
        time_to_solve = ["## Time to a solved run\n", TIME_TO_SOLVE, *solved, ""]
    return "\n".join(
        [
            header(title, seed_note, code=code),
            INTRO,
            "## Steps per second\n",
            *speed,
            "",
            *learning_phase,
            "## Whole runs\n",
            whole_runs,
            *whole,
            "",
            *time_to_solve,
            "## Every round\n",
            *detail,
            "",
            "## SB3 settings (mapped from each script's defaults)\n",
            "\n".join(settings),
            "",
        ]
    )


def main(args: Args) -> str:
    check_args(args)
    # the code measured: the checkout may move on during a long measurement
    code = code_state()
    plans = measure(args)
    text = markdown(plans, args, code)
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    except OSError as e:
        check(False, f"--out: cannot write {args.out}: {e.strerror}")
    print(f"wrote {args.out}")
    return text


if __name__ == "__main__":
    try:
        main(cli(Args, sys.argv[1:], check))
    except KeyboardInterrupt:
        print("interrupted: nothing written (--out comes at the end)", file=sys.stderr)
        sys.exit(130)
    except MeasurementFailed as e:
        print(f"error: benchmarks/throughput.py: {e}; nothing written", file=sys.stderr)
        sys.exit(1)
