"""Shared test helpers: load a script as a module, run it as a user would, read its
TensorBoard scalars."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What the contract tests need to know about each script: a tiny run that finishes in
# seconds, a setting it must refuse, and an env it cannot handle (an action or
# observation space outside what the algorithm supports).
CASES = {
    "ppo.py": dict(
        tiny=(
            ["--env-id", "CartPole-v1", "--total-timesteps", "256", "--num-envs", "2"]
            + ["--num-steps", "64", "--num-minibatches", "2", "--update-epochs", "2"]
            + ["--eval-episodes", "2"]
        ),
        inconsistent=["--num-steps", "64", "--num-envs", "2", "--num-minibatches", "7"],
        wrong_space="Blackjack-v1",
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "1e30"],
        bad=[["--num-minibatches", "0"], ["--vf-coef", "-1"], ["--clip-eps", "0"]],
    ),
    "reinforce.py": dict(
        tiny=(
            ["--env-id", "CartPole-v1", "--total-timesteps", "1000", "--num-envs", "4"]
            + ["--eval-episodes", "2"]
        ),
        inconsistent=["--gamma", "1.5"],
        wrong_space="Blackjack-v1",
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "1e30"],
        bad=[
            ["--num-envs", "0"],
            ["--vf-iters", "0"],
            ["--gamma", "nan"],
            ["--update-epochs", "0"],
        ],
    ),
    "a2c.py": dict(
        tiny=(
            ["--env-id", "CartPole-v1", "--total-timesteps", "400", "--num-envs", "2"]
            + ["--log-every", "100", "--eval-episodes", "2"]
        ),
        inconsistent=["--gae-lambda", "1.5"],
        wrong_space="Blackjack-v1",
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "1e30"],
        bad=[
            ["--num-envs", "0"],
            ["--log-every", "0"],
            ["--max-grad-norm", "inf"],
            ["--ent-coef", "-0.01"],
            ["--vf-coef", "-1"],
            ["--env-id", "Taxi-v3"],
            ["--critic", "a"],
            ["--critic", "q", "--q-lr-ratio", "0"],
        ],
    ),
    "dqn.py": dict(
        tiny=(
            ["--env-id", "CartPole-v1", "--total-timesteps", "600"]
            + ["--learning-starts", "200", "--train-freq", "100"]
            + ["--gradient-steps", "8", "--eval-episodes", "2"]
        ),
        inconsistent=["--total-timesteps", "1000", "--learning-starts", "2000"],
        wrong_space="Pendulum-v1",
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "1e30"],
        bad=[["--num-envs", "0"], ["--batch-size", "200", "--buffer-size", "100"]],
    ),
    "ddpg.py": dict(
        tiny=(
            ["--env-id", "Pendulum-v1", "--total-timesteps", "400"]
            + ["--learning-starts", "200", "--batch-size", "64", "--hidden", "64"]
            + ["--log-every", "100", "--eval-episodes", "2"]
        ),
        inconsistent=["--total-timesteps", "1000", "--learning-starts", "2000"],
        wrong_space="CartPole-v1",
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "1e30"],
        bad=[
            ["--batch-size", "200", "--buffer-size", "100"],
            ["--num-envs", "0"],
            ["--policy-frequency", "0"],
            ["--exploration-noise", "inf"],
            ["--tau", "0"],
        ],
    ),
    "sac_continuous.py": dict(
        tiny=(
            ["--env-id", "Pendulum-v1", "--total-timesteps", "400"]
            + ["--learning-starts", "200", "--batch-size", "64", "--hidden", "64"]
            + ["--log-every", "50", "--eval-episodes", "2"]
        ),
        inconsistent=["--total-timesteps", "1000", "--learning-starts", "2000"],
        wrong_space="CartPole-v1",
        lr_flag="--q-lr",
        diverge=["--q-lr", "1e30"],
        bad=[
            ["--batch-size", "200", "--buffer-size", "100"],
            ["--num-envs", "0"],
            ["--policy-frequency", "0"],
            ["--policy-lr", "inf"],
            ["--alpha", "nan", "--no-autotune"],
            ["--alpha", "0", "--no-autotune"],
        ],
    ),
    "trpo.py": dict(
        tiny=(
            ["--env-id", "CartPole-v1", "--total-timesteps", "256", "--num-envs", "2"]
            + ["--num-steps", "64", "--eval-episodes", "2"]
        ),
        inconsistent=["--max-kl", "-0.01"],
        wrong_space="Blackjack-v1",
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "1e30"],
        bad=[
            ["--max-kl", "inf"],
            ["--cg-damping", "nan"],
            ["--backtrack-coef", "1"],
            ["--vf-minibatches", "3"],
            ["--npg-step", "-1"],
            ["--npg-step", "inf"],
        ],
    ),
    "grpo_bandit.py": dict(
        tiny=(
            ["--env-id", "contextual", "--total-timesteps", "1024"]
            + ["--eval-episodes", "2"]
        ),
        inconsistent=["--group-size", "1"],
        wrong_space=None,
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "10"],
        bad=[
            ["--rm-learning-rate", "inf"],
            ["--beta", "nan"],
            ["--num-preferences", "0", "--reward", "preference"],
            ["--bandit-seed", "4294967296"],
            ["--critic-learning-rate", "0", "--advantage", "ppo"],
        ],
    ),
    # one worker: with more, the OS's scheduling makes runs differ (a3c.py's docstring)
    "a3c.py": dict(
        tiny=(
            ["--env-id", "CartPole-v1", "--total-timesteps", "400"]
            + ["--num-workers", "1", "--log-every", "100", "--eval-episodes", "2"]
        ),
        inconsistent=["--num-workers", "0"],
        wrong_space="Blackjack-v1",
        lr_flag="--learning-rate",
        diverge=["--learning-rate", "1e30"],
        bad=[
            ["--method", "q", "--env-id", "Pendulum-v1"],
            ["--method", "sarsa"],
            ["--num-workers", "257"],
            ["--num-steps", "0"],
            ["--update-every", "0"],
            ["--target-period", "0"],
            ["--end-e", "2"],
            ["--start-e", "-1"],
            ["--exploration-fraction", "0"],
            ["--gae-lambda", "2"],
            ["--max-grad-norm", "nan"],
            ["--ent-coef", "-0.01"],
            ["--vf-coef", "inf"],
        ],
    ),
}
PRESENT = [name for name in CASES if (ROOT / name).exists()]
# pytest -n auto runs one worker per core: a script's own 2 threads (ddpg, sac) beside
# another worker oversubscribe the cores (a tiny ddpg run took 16 s instead of 0.5 s).
# A test's own --threads, given later, wins.
ONE_THREAD = ["--threads", "1"]


def load(script: str):
    """Import an algorithm script (e.g. "ppo.py") as a module, without running main."""
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    # inspect (and so tyro's help text) finds a class's source through sys.modules
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def train_cli(script, argv: list[str]) -> dict:
    """train(args) in this process, with Args parsed from a command line exactly as the
    script's main would. `script` is a file name ("ppo.py") or a module from `load` (to
    train one that a test has patched)."""

    module = load(script) if isinstance(script, str) else script
    return module.train(module.parse_args(ONE_THREAD + argv + ["--no-progress"]))


def run_script(
    path: Path, argv: list[str], cwd: Path, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run a script as a user would, on CPU, in cwd."""
    command = [sys.executable, str(path), *ONE_THREAD, *argv]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a run logged, as {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags}


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
