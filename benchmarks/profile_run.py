"""Where a run's time goes: each script run whole under py-spy, a sampling profiler
that reads the process from outside (the script runs unmodified and unslowed), and
every sample sorted into the stage of train() it fell in.

  python benchmarks/profile_run.py
  python benchmarks/profile_run.py --scripts ppo.py --rate 500 --out /tmp/profile.md

A sample's stack decides its row, the first rule that matches:
  outside train()       imports, argument parsing, the run folder, saving
  env                   any frame in gymnasium (the env's step and reset, autoreset,
                        the vector env's bookkeeping, the simulator below it)
  backward              torch.Tensor.backward / torch.autograd
  optimizer step        torch.optim
  TensorBoard           any frame in tensorboard (the writer)
  STAGE · forward       a frame in torch.nn.modules: a network's forward
  STAGE · other         the rest of STAGE: tensor maths, indexing, numpy <-> torch
where STAGE is the first function of the script below train() (collect_rollout,
estimate, update, gradient_step, ReplayBuffer.sample, ...), or "train" for lines of
train() itself. Time inside a C call that holds no Python frame of its own (a
.item() that waits for the device, a numpy copy) counts to the Python line that made
the call.

Bad input (an unknown script, a rate outside 1-1000, an --out that cannot be written)
stops it with one line and exit code 2 before anything runs; Ctrl-C stops it with exit
code 130, nothing written.
"""

import collections
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, cli, code_state, header, unwritable  # noqa: E402

# Script -> the flags profiled: its defaults, evaluation off. sac_continuous.py: 5k
# random steps, then 5k steps of learning on Hopper-v5 (its default env).
PLAN = {
    "ppo.py": ["--env-id", "CartPole-v1"],
    "dqn.py": ["--env-id", "CartPole-v1"],
    "sac_continuous.py": ["--env-id", "Hopper-v5", "--total-timesteps", "10000"],
}
COMMON = ["--eval-episodes", "0", "--no-progress"]


@dataclass
class Args:
    scripts: tuple[str, ...] = tuple(PLAN)
    """scripts to profile, at the PLAN settings (any other script: at its defaults)"""
    flags: str = ""
    """extra flags for every script, after '=': --flags='--seed 2'"""
    rate: int = 250
    """samples per second"""
    out: str = "benchmarks/results/profile.md"
    """the markdown result"""


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: benchmarks/profile_run.py: {msg}", file=sys.stderr)
        sys.exit(2)


def check_args(args: Args):
    check(len(args.scripts) >= 1, "--scripts: name at least one script")
    for script in args.scripts:
        path = ROOT / script
        ok = script.endswith(".py") and path.is_file() and path.parent == ROOT
        check(ok, f"--scripts {script}: not an algorithm script in {ROOT}")
    check(1 <= args.rate <= 1000, f"--rate {args.rate}: use 1 to 1000")
    try:
        shlex.split(args.flags)
    except ValueError as e:  # an unclosed quote
        check(False, f"--flags {args.flags!r}: {e}; close the quote")
    problem = unwritable(args.out, folder=False)
    check(problem is None, f"--out {args.out!r}: {problem}")
    check(shutil.which("py-spy") is not None, "py-spy not found: pip install py-spy")


def frames(stack: str) -> list[tuple[str, str]]:
    """'f (a.py:1);g (b/c.py:2)' -> [('f', 'a.py'), ('g', 'b/c.py')], outermost
    first."""
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.rpartition(" (")
        out.append((name, where.rsplit(":", 1)[0]))
    return out


def classify(stack: str, script: str) -> str:
    """The row of one sample's stack (py-spy's collapsed form), by the rules above."""
    fs = frames(stack)
    start = next(
        (i for i, (name, path) in enumerate(fs) if name == "train" and path == script),
        None,
    )
    if start is None:
        return "outside train()"
    below = fs[start + 1 :]
    paths = [path for _, path in below]
    if any("gymnasium/" in path for path in paths):
        return "env"
    if any("torch/autograd/" in p or p.endswith("torch/_tensor.py") for p in paths):
        return "backward"
    if any("torch/optim/" in path for path in paths):
        return "optimizer step"
    if any("tensorboard" in path for path in paths):
        return "TensorBoard"
    own = [name for name, path in below if path == script]
    stage = own[0] if own else "train"
    if any("torch/nn/modules/" in path for path in paths):
        return f"{stage} · forward"
    return f"{stage} · other"


def profile(script: str, argv: list[str], rate: int, folder: str) -> tuple:
    """Run the script under py-spy; returns (samples per row, wall seconds)."""
    raw = os.path.join(folder, script + ".txt")
    log = ["--log-dir", os.path.join(folder, "runs")]
    command = ["py-spy", "record", "--rate", str(rate), "--format", "raw"]
    command += ["--output", raw, "--", sys.executable, script, *argv, *log]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    # py-spy's own exit code is 1 when the child ends before it detaches ("No child
    # process"), so the run counts by its samples and the script's closing line
    finished = " steps in " in proc.stdout
    if not (finished and os.path.exists(raw) and os.path.getsize(raw) > 0):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"{script} under py-spy failed: {' '.join(tail)}")
    rows = collections.Counter()
    for line in Path(raw).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        rows[classify(stack, script)] += int(count)
    return rows, wall


def table(rows: collections.Counter, rate: int) -> list[str]:
    total = sum(rows.values())
    in_train = total - rows["outside train()"]
    lines = ["| where | seconds | share of the run | share of train() |"]
    lines.append("|---|---|---|---|")
    for row, n in sorted(rows.items(), key=lambda item: -item[1]):
        share = "" if row == "outside train()" else f"{100 * n / in_train:.1f} %"
        lines.append(f"| {row} | {n / rate:.2f} | {100 * n / total:.1f} % | {share} |")
    return lines


def main(args: Args) -> str:
    check_args(args)
    code = code_state()
    parts = [
        header(
            "profile: where each script's time goes", "the scripts' default", code=code
        ),
        f"Sampled by py-spy {sampler_version()} at {args.rate} per second, the"
        " process whole; rows as the docstring of benchmarks/profile_run.py defines"
        " them. Seconds count samples of the main thread while it ran (not while it"
        " slept).",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for script in args.scripts:
            argv = PLAN.get(script, []) + COMMON + shlex.split(args.flags)
            print(f"profiling {script} {shlex.join(argv)}", flush=True)
            rows, wall = profile(script, argv, args.rate, folder)
            parts += ["", f"## {script}", "", f"`python {shlex.join([script, *argv])}`"]
            parts += [f"(wall {wall:.1f} s under the profiler)", ""]
            parts += table(rows, args.rate)
    text = "\n".join(parts) + "\n"
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    except OSError as e:
        check(False, f"--out: cannot write {args.out}: {e.strerror}")
    print(f"wrote {args.out}")
    return text


def sampler_version() -> str:
    proc = subprocess.run(["py-spy", "--version"], capture_output=True, text=True)
    return proc.stdout.split()[-1] if proc.stdout.strip() else "?"


if __name__ == "__main__":
    try:
        main(cli(Args, sys.argv[1:], check))
    except KeyboardInterrupt:
        print("interrupted: nothing written (--out comes at the end)", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        print(
            f"error: benchmarks/profile_run.py: {e}; nothing written", file=sys.stderr
        )
        sys.exit(1)
