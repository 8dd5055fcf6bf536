"""Run a grid of scripts × envs × seeds, each as its own subprocess of the single-file script with its own log dir.

Every run lands in {out}/{env_id}__{exp_name}__{seed}/: the script's TensorBoard run, stdout.log (stdout and stderr)
and run.json (the command, exit code, wall time). A rerun skips every run whose run.json records exit code 0, so an
interrupted grid resumes where it stopped; a failed run is reported with the tail of its log and the others go on.

  python benchmarks/run.py --suite classic --workers 1
  python benchmarks/run.py --scripts ppo.py a2c.py --env-ids CartPole-v1 --seeds 1 2 --flags "--total-timesteps 20000"
  python benchmarks/run.py --suite mujoco-short --backend ray --ray-address auto     # on an existing Ray cluster

With --backend ray each run is a Ray task (one CPU, or --gpus-per-run): the task gets the script's source (for
sb3_run.py, also benchmarks/ and the algorithm scripts it reads settings from), runs it in a temporary folder on
whichever node Ray picks, and sends its log folder back, so nodes need no shared disk.
Then `python benchmarks/report.py --log-dir <out>` turns the runs into a CSV, plots and a table.
"""

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, code_state  # noqa: E402

# Which action spaces each script handles (from its issue); suites pick scripts by this, among those present.
DISCRETE = ["reinforce.py", "a2c.py", "dqn.py", "ppo.py", "trpo.py"]
CONTINUOUS = ["reinforce.py", "a2c.py", "ppo.py", "trpo.py", "ddpg.py", "sac_continuous.py"]
OFF_POLICY = {"dqn.py", "ddpg.py", "sac_continuous.py"}
# mujoco-short budgets: what this 2-core machine runs for 2 envs × 3 seeds in about an hour each. Off-policy runs
# start learning after 5k random steps (both scripts' default).
MUJOCO_SHORT_FLAGS = {"on-policy": "--total-timesteps 100000",
                      "off-policy": "--total-timesteps 30000 --learning-starts 5000"}  # fmt: skip


@dataclass(frozen=True)
class Run:
    script: str  # path of the script, relative to the repository root (or absolute)
    env_id: str
    seed: int
    flags: tuple[str, ...] = ()  # extra command-line flags of this run
    exp_name: str = ""  # --exp-name: the script's stem, plus a label for variants

    @property
    def name(self) -> str:
        return f"{self.env_id}__{self.exp_name}__{self.seed}"

    def argv(self, log_dir: str) -> list[str]:
        return ["--env-id", self.env_id, "--seed", str(self.seed), "--exp-name", self.exp_name,
                "--log-dir", log_dir, "--no-progress", *self.flags]  # fmt: skip


def variant(script: str, flags: str = "", label: str = "") -> tuple[str, tuple[str, ...], str]:
    """(script, flags, exp_name): a script run with some flags, named stem-label (no "__", which names split on)."""
    stem = Path(script).stem
    return script, tuple(shlex.split(flags)), f"{stem}-{label}" if label else stem


def mujoco_short(script: str, sb3: bool = False):
    """script at the mujoco-short budget; with sb3, its Stable-Baselines3 counterpart on the same settings."""
    flags = MUJOCO_SHORT_FLAGS["off-policy" if script in OFF_POLICY else "on-policy"]
    return sb3_counterpart(script, flags) if sb3 else variant(script, flags)


def sb3_counterpart(script: str, flags: str = ""):
    """benchmarks/sb3_run.py: SB3 / sb3-contrib with script's settings (plus flags), logged as sb3-{stem}."""
    return "benchmarks/sb3_run.py", ("--script", script, *shlex.split(flags)), f"sb3-{Path(script).stem}"


# name: (variants, env ids, number of seeds). Scripts not in the checkout yet are left out when a suite is expanded.
SUITES = {
    "classic": ([variant(s) for s in DISCRETE], ["CartPole-v1", "Acrobot-v1"], 3),
    "mujoco-short": ([mujoco_short(s) for s in CONTINUOUS], ["InvertedPendulum-v5", "Hopper-v5"], 3),
    "reinforce-baselines": ([variant("reinforce.py", f"--baseline {b}", f"baseline-{b}")
                             for b in ("none", "mean", "value")] + [variant("a2c.py")], ["CartPole-v1"], 3),
    # Stable-Baselines3 / sb3-contrib on our scripts' settings, to run into the same --out as the suite they extend
    "classic-sb3": ([sb3_counterpart("trpo.py")], ["CartPole-v1"], 3),
    # ours beside SB3 / sb3-contrib at the mujoco-short budget: on-policy trpo, then the off-policy pair; and trpo
    # with the trust region sb3-contrib's TRPO defaults amount to on Hopper (its KL is a mean over the 3 dimensions)
    "mujoco-sb3": ([mujoco_short(s, sb3) for s in ("trpo.py", "sac_continuous.py", "ddpg.py") for sb3 in (False, True)]
                   + [variant("trpo.py", MUJOCO_SHORT_FLAGS["on-policy"] + " --target-kl 0.03 --cg-damping 0.3",
                              "kl0.03")], ["Hopper-v5"], 3),
    "halfcheetah-offpolicy": ([mujoco_short(s, sb3) for s in ("sac_continuous.py", "ddpg.py") for sb3 in (False, True)],
                              ["HalfCheetah-v5"], 3),
    # issue 21: the on-policy scripts at their Box presets and the 1M-step budget CleanRL and RL-Zoo publish at
    "mujoco-1m": ([variant(s, "--total-timesteps 1000000") for s in ("ppo.py", "trpo.py", "a2c.py")],
                  ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"], 3),
    # issue 21: ddpg and sac_continuous each beside its SB3 counterpart at 100k steps, what 2 envs × 2 seeds × 2 sides
    # take in about 2 hours on 2 cores (300k would take 6); `--flags="--total-timesteps 300000"` runs further
    "mujoco-offpolicy-100k": ([v for s in ("sac_continuous.py", "ddpg.py")
                               for v in (variant(s, "--total-timesteps 100000"),
                                         sb3_counterpart(s, "--total-timesteps 100000"))],
                              ["HalfCheetah-v5", "Hopper-v5"], 2),
    "dqn-double": ([variant("dqn.py", "--no-double", "single"), variant("dqn.py", "--double", "double")],
                   ["CartPole-v1", "Acrobot-v1"], 3),
    # issue 17: every script at its defaults on its classic env, seeds 1-10 (ddpg/sac at the budgets of their
    # InvertedPendulum and Pendulum tests, 30k and 20k steps; their default budget is MuJoCo's 1M)
    "seeds": [([variant(s) for s in DISCRETE], ["CartPole-v1"], 10),
              ([variant(s, "--total-timesteps 30000", "30k") for s in ("ddpg.py", "sac_continuous.py")],
               ["InvertedPendulum-v5"], 10),
              ([variant(s, "--total-timesteps 20000", "20k") for s in ("ddpg.py", "sac_continuous.py")],
               ["Pendulum-v1"], 10),
              ([variant("grpo_bandit.py")], ["gaussian"], 10)],
    "grpo": ([variant("grpo_bandit.py", "--scale-rewards group", "group"),
              variant("grpo_bandit.py", "--scale-rewards none", "no-std"),
              variant("grpo_bandit.py", "--advantage reinforce", "reinforce")], ["gaussian", "contextual"], 5),
    # the grpo suite's RLHF grid: GRPO on a reward model learned from --num-preferences comparisons, KL leash β
    "grpo-rlhf": ([variant("grpo_bandit.py", f"--reward preference --num-preferences {n} --beta {beta} "
                           "--total-timesteps 4000", f"b{beta}-n{n}")
                   for beta in (0, 0.3, 1) for n in (30, 300, 3000)], ["contextual"], 3),
}  # fmt: skip


@dataclass
class Args:
    suite: Optional[Literal[tuple(SUITES)]] = None  # a named grid; replaces --scripts and --env-ids
    scripts: tuple[str, ...] = ("ppo.py",)  # scripts to run, relative to the repository root
    env_ids: tuple[str, ...] = ("CartPole-v1",)  # gymnasium env ids, each run with every script
    seeds: Optional[tuple[int, ...]] = None  # seeds of every (script, env) pair (default: 1..n, n=3 or the suite's)
    flags: str = ""  # extra flags for every run, as one quoted string: "--total-timesteps 20000 --num-envs 4"
    out: str = "benchmarks/runs"  # each run writes to {out}/{env_id}__{exp_name}__{seed}/
    workers: int = 1  # runs at once (local processes, or the CPUs of a local Ray instance)
    backend: Literal["local", "ray"] = "local"  # local: a process per run on this machine; ray: a Ray task per run
    ray_address: Optional[str] = None  # an existing Ray cluster ("auto", "ray://head:10001"); default starts one here
    gpus_per_run: float = 0.0  # GPUs each Ray task asks for (0 runs on CPU)
    timeout: Optional[float] = None  # seconds after which a run is stopped and counted as failed
    dry_run: bool = False  # list the runs and whether they are done, run nothing


def expand(args: Args) -> list[Run]:
    """The grid as a list of runs, in the order they are started."""
    if args.suite:  # a suite is one grid, or a list of grids
        grids = SUITES[args.suite] if isinstance(SUITES[args.suite], list) else [SUITES[args.suite]]
        missing = sorted({v[0] for variants, _, _ in grids for v in variants if not (ROOT / v[0]).exists()})
        if missing:
            print(f"suite {args.suite}: leaving out {', '.join(missing)} (not in the checkout yet)")
        grids = [([v for v in variants if (ROOT / v[0]).exists()], env_ids, n) for variants, env_ids, n in grids]
    else:
        grids = [([variant(s) for s in args.scripts], args.env_ids, 3)]
    extra = tuple(shlex.split(args.flags))
    return [Run(script, env_id, seed, flags + extra, exp_name)
            for variants, env_ids, n_seeds in grids for env_id in env_ids for script, flags, exp_name in variants
            for seed in args.seeds or range(1, n_seeds + 1)]  # fmt: skip


def share_cores(runs: list[Run], args: Args) -> list[Run]:
    """--threads 1 for every run whose flags don't set it, when each run has one core: a Ray task (one CPU) or
    --workers ≥ cores. sac_continuous.py and ddpg.py default to 2 threads, and oversubscribed cores slow every run."""
    if args.backend == "local" and args.workers < (os.cpu_count() or 1):
        return runs
    return [r if any(f.startswith("--threads") for f in r.flags) else replace(r, flags=(*r.flags, "--threads", "1"))
            for r in runs]  # fmt: skip


def is_done(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "run.json").read_text())["returncode"] == 0
    except (OSError, ValueError, KeyError):
        return False


def execute(run: Run, script_path: str, run_dir: Path, timeout: Optional[float], code: str) -> dict:
    """Run one script as a subprocess into run_dir (emptied first); write and return its run.json record."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, script_path, *run.argv(str(run_dir))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.time()
    with open(run_dir / "stdout.log", "w") as log:
        try:
            returncode = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir, env=env,
                                        timeout=timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            returncode = "timeout"
            print(f"\nbenchmarks/run.py: stopped after {timeout} s", file=log)
    wall_time = time.time() - start
    evals = [line for line in (run_dir / "stdout.log").read_text(errors="replace").splitlines()
             if line.startswith("eval/episodic_return")]  # the line every script prints after its evaluation
    record = {**asdict(run), "command": shlex.join(["python", run.script, *run.argv(".")]), "returncode": returncode,
              "wall_time": wall_time, "eval": evals[-1] if evals else None, "host": os.uname().nodename,
              "code": code}  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(record, indent=1))
    return record


def shipped(script: str) -> tuple[str, dict[str, bytes]]:
    """What a Ray task needs to run script on a node without our checkout: the script's path in the task's folder,
    and the files to write there. An algorithm script runs alone; a tool of benchmarks/ (sb3_run.py) imports its
    neighbours and reads the settings of the algorithm scripts at the repository root."""
    path = ROOT / script
    if path.parent != ROOT / "benchmarks":
        return path.name, {path.name: path.read_bytes()}
    files = [*(ROOT / "benchmarks").glob("*.py"), *ROOT.glob("*.py")]
    return str(path.relative_to(ROOT)), {str(f.relative_to(ROOT)): f.read_bytes() for f in files}


def execute_remote(run: Run, script: str, files: dict[str, bytes], timeout: Optional[float],
                   code: str) -> tuple[dict, bytes]:  # fmt: skip
    """A Ray task: write files (from shipped()) to a temporary folder, run script there, return its record and the
    run folder as a tar."""
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
        futures = {pool.submit(execute, r, str(ROOT / r.script), out / r.name, args.timeout, code_state()): r
                   for r in todo}  # fmt: skip
        for future in as_completed(futures):
            yield futures[future], future.result()


def run_ray(todo: list[Run], args: Args, out: Path):
    import ray

    if not ray.is_initialized():
        # "local" starts a Ray instance of our own even where a cluster runs here (one ray.init would join)
        local = {} if args.ray_address else {"num_cpus": args.workers, "include_dashboard": False}
        ray.init(address=args.ray_address or "local", log_to_driver=False, **local)
    task = ray.remote(num_cpus=1, num_gpus=args.gpus_per_run, max_retries=0)(execute_remote)
    pending = {task.remote(r, *shipped(r.script), args.timeout, code_state()): r for r in todo}
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        run = pending.pop(ready)
        shutil.rmtree(out / run.name, ignore_errors=True)
        try:
            record, archive = ray.get(ready)
        except ray.exceptions.RayError as e:  # the task itself died (a node lost, out of memory): a failed run
            (out / run.name).mkdir(parents=True)
            (out / run.name / "stdout.log").write_text(f"{type(e).__name__}: {e}\n")
            record = {**asdict(run), "returncode": "ray error", "wall_time": float("nan"), "eval": None}
            (out / run.name / "run.json").write_text(json.dumps(record, indent=1))
            yield run, record
            continue
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(out / run.name, filter="data")
        yield run, record


def main(args: Args) -> int:
    """Run the grid; return the number of failed runs."""
    out = Path(args.out).resolve()
    runs = share_cores(expand(args), args)
    missing = sorted({r.script for r in runs if not (ROOT / r.script).exists()})
    if missing:
        print(f"error: benchmarks/run.py: no such script: {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    todo = [r for r in runs if not is_done(out / r.name)]
    where = f"Ray cluster at {args.ray_address}" if args.backend == "ray" and args.ray_address else \
        f"{args.backend} backend, {args.workers} worker(s)"
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run ({where}) -> {out}")
    if args.dry_run:
        for r in runs:
            print(f"  {'done' if r not in todo else 'todo'}  {r.name}  {' '.join(r.flags)}")
        return 0
    failed = []
    backend = run_local if args.backend == "local" else run_ray
    for i, (run, rec) in enumerate(backend(todo, args, out), 1):
        status = "ok" if rec["returncode"] == 0 else f"FAILED (exit code {rec['returncode']})"
        print(f"[{i}/{len(todo)}] {status}  {run.name}  {rec['wall_time']:.1f} s  {rec['eval'] or ''}", flush=True)
        if rec["returncode"] != 0:
            failed.append(run.name)
            print(log_tail(out / run.name), flush=True)
    print(f"{len(runs) - len(failed)}/{len(runs)} runs done" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return len(failed)


if __name__ == "__main__":
    sys.exit(1 if main(tyro.cli(Args)) else 0)
