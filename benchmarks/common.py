"""What run.py, report.py and throughput.py share: the repository root, reading a run's TensorBoard scalars, and
the header every results file carries (command, versions, machine)."""

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["torch", "gymnasium", "mujoco", "numpy", "stable_baselines3", "sb3_contrib", "ray"]


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a TensorBoard run logged, as {tag: [(step, value), ...]} in logging order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def env_threshold(env_id: str, overrides: dict[str, float] | None = None) -> float | None:
    """The return that counts as solving env_id: an override, else the env's registered reward_threshold."""
    if overrides and env_id in overrides:
        return overrides[env_id]
    import gymnasium as gym

    try:
        return gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join([f"python {platform.python_version()}"] + found)


def code_state() -> str:
    """The commit measured, and which tracked Python files differed from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        changed = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown (no git)"
    files = [f for f in changed.stdout.split() if f.endswith(".py")]
    return f"commit {commit.stdout.strip()}" + (f" with uncommitted changes to {', '.join(files)}" if files else "")


def header(title: str, seeds: str, argv: list[str] | None = None, code: str | None = None) -> str:
    """The top of every results file: what was run, with which software, on which machine, with how many seeds.
    code: code_state() taken when the measurement started (default: now)."""
    argv = sys.argv if argv is None else argv
    command = "python " + shlex.join([os.path.relpath(argv[0], ROOT) if argv[0].endswith(".py") else argv[0]]
                                     + list(argv[1:]))  # fmt: skip
    return (f"# {title}\n\n"
            f"- Command: `{command}`\n"
            f"- Code: {code or code_state()}\n"
            f"- Versions: {versions()}\n"
            f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}\n"
            f"- Seeds: {seeds}\n")  # fmt: skip
