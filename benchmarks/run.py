"""Run a grid of scripts × envs × seeds, each run a subprocess of the single-file
script with its own log dir.

Every run lands in {out}/{env_id}__{exp_name}__{seed}/: the script's TensorBoard run,
stdout.log (stdout and stderr) and run.json (the command, exit code, wall time). A
rerun skips every run whose run.json records exit code 0, so an interrupted grid
resumes where it stopped; a failed run is reported with the tail of its log and the
others go on.

  python benchmarks/run.py --suite classic --workers 1
  python benchmarks/run.py --scripts ppo.py a2c.py --env-ids CartPole-v1 \\
      --seeds 1 2 --flags="--total-timesteps 20000"
  # on an existing Ray cluster:
  python benchmarks/run.py --suite mujoco-short --backend ray --ray-address auto

With --backend ray each run is a Ray task (one CPU, or --gpus-per-run): the task gets
the script's source (for sb3_run.py, also benchmarks/ and the algorithm scripts it
reads settings from), runs it in a temporary folder on whichever node Ray picks, and
sends its log folder back, so nodes need no shared disk. Then
`python benchmarks/report.py --log-dir <out>` turns the runs into a CSV, plots and a
table.

Bad input (a count below 1, a timeout that is not > 0, an unclosed quote in --flags, an
--out that cannot be written) stops it with one line and exit code 2 before anything
is written. Ctrl-C stops the runs in flight (each script gets the Ctrl-C and saves what
it promised), keeps the finished ones for a rerun to skip, and exits with code 130.
"""

import importlib.util
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, cli, code_state, unwritable  # noqa: E402

# Which action spaces each script handles (from its issue); suites pick scripts by
# this, among those present.
DISCRETE = ["reinforce.py", "a2c.py", "dqn.py", "ppo.py", "trpo.py"]
CONTINUOUS = [
    "reinforce.py",
    "a2c.py",
    "ppo.py",
    "trpo.py",
    "ddpg.py",
    "sac_continuous.py",
]
OFF_POLICY = {"dqn.py", "ddpg.py", "sac_continuous.py"}
# mujoco-short budgets: what this 2-core machine runs for 2 envs × 3 seeds in about an
# hour each. Off-policy runs start learning after 5k random steps (both scripts'
# default).
MUJOCO_SHORT_FLAGS = {
    "on-policy": "--total-timesteps 100000",
    "off-policy": "--total-timesteps 30000 --learning-starts 5000",
}


@dataclass(frozen=True)
class Run:
    script: str
    """path of the script, relative to the repository root (or absolute)"""
    env_id: str
    seed: int
    flags: tuple[str, ...] = ()
    """extra command-line flags of this run"""
    exp_name: str = ""
    """--exp-name: the script's stem, plus a label for variants"""

    @property
    def name(self) -> str:
        return f"{self.env_id}__{self.exp_name}__{self.seed}"

    def argv(self, log_dir: str) -> list[str]:
        argv = ["--env-id", self.env_id, "--seed", str(self.seed)]
        argv += ["--exp-name", self.exp_name, "--log-dir", log_dir, "--no-progress"]
        return argv + list(self.flags)


Variant = tuple[str, tuple[str, ...], str]


def variant(script: str, flags: str = "", label: str = "") -> Variant:
    """(script, flags, exp_name): a script run with some flags, named stem-label (no
    "__", which names split on)."""
    stem = Path(script).stem
    exp_name = f"{stem}-{label}" if label else stem
    return script, tuple(shlex.split(flags)), exp_name


def mujoco_short(script: str, sb3: bool = False) -> Variant:
    """script at the mujoco-short budget; with sb3, its Stable-Baselines3 counterpart
    on the same settings."""
    kind = "off-policy" if script in OFF_POLICY else "on-policy"
    flags = MUJOCO_SHORT_FLAGS[kind]
    if sb3:
        return sb3_counterpart(script, flags)
    return variant(script, flags)


def sb3_counterpart(script: str, flags: str = "") -> Variant:
    """benchmarks/sb3_run.py: SB3 / sb3-contrib with script's settings (plus flags),
    logged as sb3-{stem}."""
    sb3_flags = ("--script", script, *shlex.split(flags))
    return "benchmarks/sb3_run.py", sb3_flags, f"sb3-{Path(script).stem}"


def beside_sb3(scripts: tuple[str, ...], flags: Optional[str] = None) -> list[Variant]:
    """Each script, then its SB3 counterpart on the same settings: with flags, or at
    the mujoco-short budget."""
    variants = []
    for script in scripts:
        if flags is None:
            variants += [mujoco_short(script), mujoco_short(script, sb3=True)]
        else:
            variants += [variant(script, flags), sb3_counterpart(script, flags)]
    return variants


def rlhf(beta: float, n: int, advantage: str = "grpo") -> Variant:
    """grpo_bandit.py on a reward model learned from n preferences, KL leash β; with
    advantage ppo, PPO-style RLHF (exp name ppo-b{β}-n{n})."""
    flags = f"--reward preference --num-preferences {n} --beta {beta}"
    flags += f" --advantage {advantage} --total-timesteps 4000"
    label = f"b{beta}-n{n}"
    if advantage != "grpo":
        label = f"{advantage}-{label}"
    return variant("grpo_bandit.py", flags, label)


BASELINES = ("none", "mean", "value")
REINFORCE_BASELINES = [
    variant("reinforce.py", f"--baseline {b}", f"baseline-{b}") for b in BASELINES
]
# trpo.py with the trust region δ that sb3-contrib's TRPO defaults amount to on Hopper
# (its KL is a mean over the 3 action dimensions)
TRPO_KL_003 = variant(
    "trpo.py",
    MUJOCO_SHORT_FLAGS["on-policy"] + " --max-kl 0.03 --cg-damping 0.3",
    "kl0.03",
)
SMALL_OFF_POLICY = ("ddpg.py", "sac_continuous.py")

# name: (variants, env ids, number of seeds), or a list of them. Scripts not in the
# checkout yet are left out when a suite is expanded.
SUITES = {
    "classic": ([variant(s) for s in DISCRETE], ["CartPole-v1", "Acrobot-v1"], 3),
    "mujoco-short": (
        [mujoco_short(s) for s in CONTINUOUS],
        ["InvertedPendulum-v5", "Hopper-v5"],
        3,
    ),
    "reinforce-baselines": (
        REINFORCE_BASELINES + [variant("a2c.py")],
        ["CartPole-v1"],
        3,
    ),
    # issue 30: reinforce.py on-policy (K = 1) beside K = 4 steps per batch, steps 2-4
    # importance weighted with each --importance mode; a constant step size, so that
    # π_θ keeps moving as the episodes grow long (annealed, it barely moves late on)
    "reinforce-importance": (
        [variant("reinforce.py", "--update-epochs 1 --no-anneal-lr", "k1")]
        + [
            variant(
                "reinforce.py",
                f"--update-epochs 4 --importance {m} --no-anneal-lr",
                f"k4-{m}",
            )
            for m in ("trajectory", "per-decision", "per-step")
        ],
        ["CartPole-v1"],
        3,
    ),
    # Stable-Baselines3 / sb3-contrib on our scripts' settings, to run into the same
    # --out as the suite they extend
    "classic-sb3": ([sb3_counterpart("trpo.py")], ["CartPole-v1"], 3),
    # ours beside SB3 / sb3-contrib at the mujoco-short budget: on-policy trpo, then
    # the off-policy pair; and trpo at sb3-contrib's trust region
    "mujoco-sb3": (
        beside_sb3(("trpo.py", "sac_continuous.py", "ddpg.py")) + [TRPO_KL_003],
        ["Hopper-v5"],
        3,
    ),
    "halfcheetah-offpolicy": (
        beside_sb3(("sac_continuous.py", "ddpg.py")),
        ["HalfCheetah-v5"],
        3,
    ),
    # issue 21: the on-policy scripts at their Box presets and the 1M-step budget
    # CleanRL and RL-Zoo publish at
    "mujoco-1m": (
        [
            variant(s, "--total-timesteps 1000000")
            for s in ("ppo.py", "trpo.py", "a2c.py")
        ],
        ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"],
        3,
    ),
    # issue 21: ddpg and sac_continuous each beside its SB3 counterpart at 100k steps,
    # what 2 envs × 2 seeds × 2 sides take in about 2 hours on 2 cores (300k would
    # take 6); `--flags="--total-timesteps 300000"` runs further
    "mujoco-offpolicy-100k": (
        beside_sb3(("sac_continuous.py", "ddpg.py"), "--total-timesteps 100000"),
        ["HalfCheetah-v5", "Hopper-v5"],
        2,
    ),
    "dqn-double": (
        [
            variant("dqn.py", "--no-double", "single"),
            variant("dqn.py", "--double", "double"),
        ],
        ["CartPole-v1", "Acrobot-v1"],
        3,
    ),
    # issue 17: every script at its defaults on its classic env, seeds 1-10 (ddpg/sac
    # at the budgets of their InvertedPendulum and Pendulum tests, 30k and 20k steps;
    # their default budget is MuJoCo's 1M)
    "seeds": [
        ([variant(s) for s in DISCRETE], ["CartPole-v1"], 10),
        # issue 30: a2c.py's Q actor-critic (SARSA critic) beside its V critic
        ([variant("a2c.py", "--critic q", "q")], ["CartPole-v1"], 10),
        # issue 30: a3c.py (2 worker processes: run it with --workers 1 beside a2c's
        # row for wall times that compare)
        ([variant("a3c.py")], ["CartPole-v1"], 10),
        (
            [variant(s, "--total-timesteps 30000", "30k") for s in SMALL_OFF_POLICY],
            ["InvertedPendulum-v5"],
            10,
        ),
        (
            [variant(s, "--total-timesteps 20000", "20k") for s in SMALL_OFF_POLICY],
            ["Pendulum-v1"],
            10,
        ),
        ([variant("grpo_bandit.py")], ["gaussian"], 10),
    ],
    "grpo": (
        [
            variant("grpo_bandit.py", "--scale-rewards group", "group"),
            variant("grpo_bandit.py", "--scale-rewards none", "no-std"),
            variant("grpo_bandit.py", "--advantage reinforce", "reinforce"),
        ],
        ["gaussian", "contextual"],
        5,
    ),
    # the grpo suite's RLHF grid: GRPO on a reward model learned from
    # --num-preferences comparisons, KL leash β
    "grpo-rlhf": (
        [rlhf(beta, n) for beta in (0, 0.3, 1) for n in (30, 300, 3000)],
        ["contextual"],
        3,
    ),
    # PPO-style RLHF (--advantage ppo) beside the two suites above: run each into the
    # same --out as the suite it extends (benchmarks/runs/grpo, .../grpo-rlhf)
    "grpo-ppo": (
        [variant("grpo_bandit.py", "--advantage ppo", "ppo")],
        ["gaussian", "contextual"],
        5,
    ),
    "grpo-rlhf-ppo": (
        [rlhf(beta, n, "ppo") for beta in (0, 0.3, 1) for n in (30, 300, 3000)],
        ["contextual"],
        3,
    ),
}


@dataclass
class Args:
    suite: Optional[Literal[tuple(SUITES)]] = None
    """a named grid; replaces --scripts and --env-ids"""
    scripts: tuple[str, ...] = ("ppo.py",)
    """scripts to run, relative to the repository root"""
    env_ids: tuple[str, ...] = ("CartPole-v1",)
    """gymnasium env ids, each run with every script"""
    seeds: Optional[tuple[int, ...]] = None
    """seeds of every (script, env) pair (default: 1..n, n=3 or the suite's)"""
    flags: str = ""
    """flags for every run, one string after '=': --flags='--total-timesteps 20000'"""
    out: str = "benchmarks/runs"
    """each run writes to {out}/{env_id}__{exp_name}__{seed}/"""
    workers: int = 1
    """runs at once (local processes, or the CPUs of a local Ray instance)"""
    backend: Literal["local", "ray"] = "local"
    """local: a process per run on this machine; ray: a Ray task per run"""
    ray_address: Optional[str] = None
    """an existing Ray cluster ("auto", "ray://head:10001"); default starts one here"""
    gpus_per_run: float = 0.0
    """GPUs each Ray task asks for (0 runs on CPU)"""
    timeout: Optional[float] = None
    """seconds after which a run is stopped and counted as failed"""
    dry_run: bool = False
    """list the runs and whether they are done, run nothing"""


def expand(args: Args) -> list[Run]:
    """The grid as a list of runs, in the order they are started."""
    if args.suite:
        # a suite is one grid, or a list of grids
        grids = SUITES[args.suite]
        if not isinstance(grids, list):
            grids = [grids]
        scripts = {v[0] for variants, _, _ in grids for v in variants}
        missing = sorted(s for s in scripts if not (ROOT / s).exists())
        if missing:
            names = ", ".join(missing)
            print(f"suite {args.suite}: leaving out {names} (not in the checkout yet)")
        present = []
        for variants, env_ids, n in grids:
            variants = [v for v in variants if (ROOT / v[0]).exists()]
            present.append((variants, env_ids, n))
        grids = present
    else:
        grids = [([variant(s) for s in args.scripts], args.env_ids, 3)]
    extra = tuple(shlex.split(args.flags))
    runs = []
    for variants, env_ids, n_seeds in grids:
        for env_id in env_ids:
            for script, flags, exp_name in variants:
                for seed in args.seeds or range(1, n_seeds + 1):
                    runs.append(Run(script, env_id, seed, flags + extra, exp_name))
    return runs


def share_cores(runs: list[Run], args: Args) -> list[Run]:
    """--threads 1 for every run whose flags don't set it, when each run has one
    core: a Ray task (one CPU) or --workers ≥ cores. sac_continuous.py and ddpg.py
    default to 2 threads, and oversubscribed cores slow every run."""
    if args.backend == "local" and args.workers < (os.cpu_count() or 1):
        return runs
    shared = []
    for r in runs:
        if not any(f.startswith("--threads") for f in r.flags):
            r = replace(r, flags=(*r.flags, "--threads", "1"))
        shared.append(r)
    return shared


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: benchmarks/run.py: {msg}", file=sys.stderr)
        sys.exit(2)


# gymnasium's env id grammar ([namespace/]name[-vN]), without the "__" names split on
ENV_ID = re.compile(r"([\w:-]+/)?[\w:.-]+")


def check_args(args: Args):
    """Refuse settings no grid can run with, before anything is written."""
    check(1 <= args.workers <= 1024, f"--workers {args.workers}: use 1 to 1024")
    if args.timeout is not None:
        ok = math.isfinite(args.timeout) and args.timeout > 0
        check(ok, f"--timeout {args.timeout}: seconds > 0 (leave it out for none)")
    gpus = args.gpus_per_run
    check(math.isfinite(gpus) and gpus >= 0, f"--gpus-per-run {gpus}: use 0 or more")
    check(gpus <= 1 or gpus.is_integer(), "--gpus-per-run above 1 must be whole")
    if args.backend == "ray":
        found = importlib.util.find_spec("ray") is not None
        check(found, "--backend ray needs Ray: pip install ray")
    check(args.suite or args.scripts, "--scripts: name at least one script")
    check(args.suite or args.env_ids, "--env-ids: name at least one env id")
    check(all(s.strip() for s in args.scripts), "--scripts '': name a script")
    for env_id in () if args.suite else args.env_ids:
        ok = ENV_ID.fullmatch(env_id) and "__" not in env_id and len(env_id) <= 100
        check(ok, f"--env-ids {env_id!r}: not an env id (e.g. CartPole-v1)")
    for seed in args.seeds or ():
        check(0 <= seed < 2**32, f"--seeds {seed}: a seed lies in [0, 2^32)")
    try:
        shlex.split(args.flags)
    except ValueError as e:  # an unclosed quote
        check(False, f"--flags {args.flags!r}: {e}; close the quote")
    problem = unwritable(args.out)
    check(problem is None, f"--out {args.out!r}: {problem}")


def is_done(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "run.json").read_text())["returncode"] == 0
    except (OSError, ValueError, KeyError):
        return False


# The runs' processes. Each runs in a session of its own, so that a Ctrl-C reaches it
# once, from stop(), and the script can save what it promised: whoever takes a process
# out of CHILDREN (set.pop and set.remove are atomic) stops it. STOPPING: [] until a
# Ctrl-C. (No locks: Ray pickles execute with the globals it reads.)
CHILDREN = set()
STOPPING = []


def signal_group(proc: subprocess.Popen, signum: int):
    """signum to proc and whatever it started (its process group), if it still runs."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass


def stop(procs: list, grace: float = 5.0):
    """Ctrl-C to each run, then after grace seconds kill what still runs."""
    for proc in procs:
        signal_group(proc, signal.SIGINT)
    deadline = time.time() + grace
    for proc in procs:
        try:
            proc.wait(max(deadline - time.time(), 0))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()


def taken(proc: subprocess.Popen) -> bool:
    """Take proc out of CHILDREN: True for the one caller that does."""
    try:
        CHILDREN.remove(proc)
        return True
    except KeyError:
        return False


def wait(proc: subprocess.Popen, timeout: Optional[float]) -> int:
    """proc.wait(timeout), a second at a time: a blocking wait would hold off the
    KeyboardInterrupt with which Ray cancels a task."""
    end = time.time() + (math.inf if timeout is None else timeout)
    while True:
        try:
            return proc.wait(min(1.0, max(end - time.time(), 0.0)))
        except subprocess.TimeoutExpired:
            if time.time() >= end:
                raise


def interrupt(signum, frame):
    """Ctrl-C: start no more runs, stop those running, then stop the grid."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C changes nothing
    STOPPING.append(signum)
    running = []
    while CHILDREN:
        try:
            running.append(CHILDREN.pop())
        except KeyError:  # a run took its own process
            break
    stop(running)
    raise KeyboardInterrupt


def execute(
    run: Run, script_path: str, run_dir: Path, timeout: Optional[float], code: str
) -> Optional[dict]:
    """Run one script as a subprocess into run_dir (emptied first); write and return
    its run.json record (None if a Ctrl-C stopped the grid before it started)."""
    if STOPPING:
        return None
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, script_path, *run.argv(str(run_dir))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.time()
    with open(run_dir / "stdout.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=run_dir,
            env=env,
            start_new_session=True,
        )
        CHILDREN.add(proc)
        if STOPPING and taken(proc):  # a Ctrl-C came as it started
            stop([proc])
        try:
            returncode = wait(proc, timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
            returncode = "timeout"
            print(f"\nbenchmarks/run.py: stopped after {timeout} s", file=log)
        except KeyboardInterrupt:  # a Ray task cancelled by a Ctrl-C of run.py
            if taken(proc):
                stop([proc])
            raise
        finally:
            CHILDREN.discard(proc)
    wall_time = time.time() - start
    # the line every script prints after its evaluation
    lines = (run_dir / "stdout.log").read_text(errors="replace").splitlines()
    evals = [line for line in lines if line.startswith("eval/episodic_return")]
    record = {
        **asdict(run),
        "command": shlex.join(["python", run.script, *run.argv(".")]),
        "returncode": returncode,
        "wall_time": wall_time,
        "eval": evals[-1] if evals else None,
        "host": os.uname().nodename,
        "code": code,
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=1))
    return record


def shipped(script: str) -> tuple[str, dict[str, bytes]]:
    """What a Ray task needs to run script on a node without our checkout: the
    script's path in the task's folder, and the files to write there. An algorithm
    script runs alone; a tool of benchmarks/ (sb3_run.py) imports its neighbours and
    reads the settings of the algorithm scripts at the repository root."""
    path = ROOT / script
    if path.parent != ROOT / "benchmarks":
        return path.name, {path.name: path.read_bytes()}
    files = [*(ROOT / "benchmarks").glob("*.py"), *ROOT.glob("*.py")]
    contents = {str(f.relative_to(ROOT)): f.read_bytes() for f in files}
    return str(path.relative_to(ROOT)), contents


def execute_remote(
    run: Run, script: str, files: dict[str, bytes], timeout: Optional[float], code: str
) -> tuple[dict, bytes]:
    """A Ray task: write files (from shipped()) to a temporary folder, run script
    there, return its record and the run folder as a tar."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / name).write_bytes(data)
        run_dir = Path(tmp) / run.name
        record = execute(run, str(Path(tmp) / script), run_dir, timeout, code)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(run_dir, arcname=".")
        return record, buf.getvalue()


def log_tail(run_dir: Path, lines: int = 15) -> str:
    try:
        text = (run_dir / "stdout.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def run_local(todo: list[Run], args: Args, out: Path):
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {}
        for r in todo:
            script = str(ROOT / r.script)
            job = (r, script, out / r.name, args.timeout, code_state())
            futures[pool.submit(execute, *job)] = r
        for future in as_completed(futures):
            yield futures[future], future.result()


def start_ray(args: Args):
    """Join the cluster at --ray-address, or start a Ray instance of our own."""
    import ray

    if ray.is_initialized():
        return
    # "local" starts a Ray instance of our own even where a cluster runs here (one
    # ray.init would join)
    local = {"num_cpus": args.workers, "include_dashboard": False}
    if args.ray_address:
        local = {}
    try:
        ray.init(address=args.ray_address or "local", log_to_driver=False, **local)
    except Exception as e:  # no cluster there, another Ray version, no resources...
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        check(False, f"cannot start or join Ray: {why}")


def run_ray(todo: list[Run], args: Args, out: Path):
    import ray

    start_ray(args)
    remote = ray.remote(num_cpus=1, num_gpus=args.gpus_per_run, max_retries=0)
    task = remote(execute_remote)
    pending = {}
    for r in todo:
        pending[task.remote(r, *shipped(r.script), args.timeout, code_state())] = r
    while pending:
        try:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
        except KeyboardInterrupt:
            # each task stops its run (a Ctrl-C to it), as the local backend does
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=15)
            raise
        run = pending.pop(ready)
        run_dir = out / run.name
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            record, archive = ray.get(ready)
        except ray.exceptions.RayError as e:
            # the task itself died (a node lost, out of memory): a failed run
            run_dir.mkdir(parents=True)
            (run_dir / "stdout.log").write_text(f"{type(e).__name__}: {e}\n")
            record = {
                **asdict(run),
                "returncode": "ray error",
                "wall_time": float("nan"),
                "eval": None,
            }
            (run_dir / "run.json").write_text(json.dumps(record, indent=1))
            yield run, record
            continue
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(run_dir, filter="data")
        yield run, record


def main(args: Args) -> int:
    """Run the grid; return the number of failed runs."""
    check_args(args)
    out = Path(args.out).resolve()
    runs = share_cores(expand(args), args)
    missing = sorted({r.script for r in runs if not (ROOT / r.script).is_file()})
    check(not missing, f"no such script: {', '.join(missing)}")
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    check(not twice, f"each run once: {', '.join(twice)} named twice")
    todo = [r for r in runs if not is_done(out / r.name)]
    if args.backend == "ray" and args.ray_address:
        where = f"Ray cluster at {args.ray_address}"
    else:
        where = f"{args.backend} backend, {args.workers} worker(s)"
    done = len(runs) - len(todo)
    print(
        f"{len(runs)} runs, {done} already done, {len(todo)} to run ({where}) -> {out}"
    )
    if args.dry_run:
        for r in runs:
            state = "todo" if r in todo else "done"
            print(f"  {state}  {r.name}  {' '.join(r.flags)}")
        return 0
    if args.backend == "ray":
        start_ray(args)  # before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        check(False, f"--out: cannot create {out}: {e.strerror}")
    failed = []
    backend = run_local if args.backend == "local" else run_ray
    signal.signal(signal.SIGINT, interrupt)
    try:
        for i, (run, rec) in enumerate(backend(todo, args, out), 1):
            status = "ok"
            if rec["returncode"] != 0:
                status = f"FAILED (exit code {rec['returncode']})"
            wall_time = f"{rec['wall_time']:.1f} s"
            line = f"[{i}/{len(todo)}] {status}  {run.name}  {wall_time}"
            print(f"{line}  {rec['eval'] or ''}", flush=True)
            if rec["returncode"] != 0:
                failed.append(run.name)
                print(log_tail(out / run.name), flush=True)
    except KeyboardInterrupt:
        kept = sum(is_done(out / r.name) for r in runs)
        msg = f"interrupted: stopped the runs in flight; kept {kept}/{len(runs)} runs"
        print(f"{msg} finished in {out} (a rerun skips them)", file=sys.stderr)
        sys.exit(130)
    summary = f"{len(runs) - len(failed)}/{len(runs)} runs done"
    if failed:
        summary += f"; failed: {', '.join(failed)}"
    print(summary)
    return len(failed)


if __name__ == "__main__":
    try:
        sys.exit(1 if main(cli(Args, sys.argv[1:], check)) else 0)
    except KeyboardInterrupt:  # before the grid started
        print("interrupted: no run started", file=sys.stderr)
        sys.exit(130)
