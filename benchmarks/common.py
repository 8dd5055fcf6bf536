"""What run.py, report.py and throughput.py share: the repository root, reading a
run's TensorBoard scalars, the header every results file carries (command,
versions, machine), and refusing bad input in one line (a tyro error, a folder that
cannot be written)."""

import contextlib
import io
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [
    "torch",
    "gymnasium",
    "mujoco",
    "numpy",
    "stable_baselines3",
    "sb3_contrib",
    "ray",
]


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a TensorBoard run logged, as {tag: [(step, value), ...]} in
    logging order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return scalars


def env_threshold(env_id: str, overrides: dict | None = None) -> float | None:
    """The return that counts as solving env_id: an override, else the env's
    registered reward_threshold."""
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
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join([f"python {platform.python_version()}"] + found)


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout


def code_state() -> str:
    """The commit measured, and which tracked Python files differed from it."""
    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = git("diff", "--name-only", "HEAD").split()
    except OSError:
        return "unknown (no git)"
    files = [f for f in changed if f.endswith(".py")]
    if not files:
        return f"commit {commit}"
    return f"commit {commit} with uncommitted changes to {', '.join(files)}"


def command_line(argv: list[str]) -> str:
    """argv as a shell command run from the repository root."""
    script = argv[0]
    if script.endswith(".py"):
        script = os.path.relpath(script, ROOT)
    return "python " + shlex.join([script, *argv[1:]])


def header(
    title: str, seeds: str, argv: list[str] | None = None, code: str | None = None
) -> str:
    """The top of every results file: what was run, with which software, on which
    machine, with how many seeds. code: code_state() taken when the measurement
    started (default: now)."""
    if argv is None:
        argv = sys.argv
    system = f"{platform.system()} {platform.release()}"
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {system}"
    return (
        f"# {title}\n\n"
        f"- Command: `{command_line(argv)}`\n"
        f"- Code: {code or code_state()}\n"
        f"- Versions: {versions()}\n"
        f"- Machine: {machine}\n"
        f"- Seeds: {seeds}\n"
    )


def cli(cls, argv: list[str], check):
    """cls from the command line argv, tyro's error box folded into one line for the
    tool's check(ok, msg); --help prints and exits 0. A --flags value must follow '='
    (a separate value starting with '-' reads as an option): the line says so."""
    import tyro

    for name, value in zip(argv, [*argv[1:], None]):
        if name == "--flags" and (value is None or value.startswith("-")):
            example = shlex.quote(value or "--total-timesteps 20000")
            check(False, f"--flags takes one string after '=': --flags={example}")
    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text):  # --help goes to stdout, errors here
            return tyro.cli(cls, args=argv)
    except SystemExit:  # tyro's box: title, what is wrong, help, "For full helptext"
        lines = [line.strip(" │") for line in text.getvalue().splitlines()]
        msg = " ".join(line for line in lines if line[:1] not in "╭╰─")
        msg = msg.split(" For full helptext")[0].replace(" Argument helptext:", ";")
        check(not lines, msg.replace(" Perhaps you meant:", "; did you mean"))
        raise  # after --help


def unwritable(path: str, folder: bool = True) -> str | None:
    """Why path cannot be written (a folder, or with folder=False a file), or None.
    Tried by making and removing a folder in the nearest folder that exists, so that a
    refusal leaves nothing behind."""
    if not path.strip():
        return "an empty path; name one"
    path = os.path.abspath(path)
    if folder and os.path.lexists(path) and not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not folder and os.path.isdir(path):
        return f"{path} is a folder, not a file"
    existing = path if folder else os.path.dirname(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as e:
        return f"cannot create a folder in {existing}: {e.strerror}"
    return None
