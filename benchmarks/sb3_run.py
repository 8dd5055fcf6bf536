"""One Stable-Baselines3 / sb3-contrib training run with the settings of one of our
scripts, logged like our scripts, so that run.py can put it in a grid and report.py
can plot it beside ours.

  python benchmarks/sb3_run.py --script sac_continuous.py --env-id Hopper-v5 \\
      --seed 1 --total-timesteps 30000
  python benchmarks/run.py --scripts benchmarks/sb3_run.py \\
      --flags="--script trpo.py" --env-ids CartPole-v1

Every flag other than --script, --env-id, --seed, --exp-name, --log-dir and
--no-progress goes to the script's own Args; the resolved settings are mapped onto
SB3 exactly as throughput.py maps them (same networks, batch sizes, epochs, learning
rates, torch threads). The run writes charts/episodic_return (every finished training
episode), charts/SPS and eval/episodic_return (10 deterministic episodes at the end)
to {log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}, and prints the eval line
every script prints. It imports throughput.py from beside it; as a Ray task, run.py
sends that and the algorithm scripts along.

Bad input (an unknown script or env, settings the script refuses, a count out of range,
a --log-dir that cannot be written) stops it with one line and exit code 2, nothing
written; Ctrl-C stops the run with exit code 130 and says where its folder is.
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402
from common import unwritable  # noqa: E402


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: benchmarks/sb3_run.py: {msg}", file=sys.stderr)
        sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """argparse's usage and error lines, as this tool's one line."""
        check(False, message)


def parse_args():
    """This tool's own flags, and the rest (for the script's Args), checked."""
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--script",
        required=True,
        choices=sorted(throughput.COUNTERPARTS),
        help="whose settings SB3 runs with",
    )
    p.add_argument("--env-id", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--exp-name", default="", help="default: sb3-{script stem}")
    p.add_argument("--log-dir", default="runs")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="accepted for run.py; SB3 runs print no progress",
    )
    known, flags = p.parse_known_args()
    check(0 <= known.seed < 2**31, f"--seed {known.seed}: use 0 to 2^31 - 1")
    episodes = known.eval_episodes
    check(0 <= episodes <= 1000, f"--eval-episodes {episodes}: use 0 to 1000")
    name = known.exp_name
    plain = os.path.basename(name) == name.strip(".")[:99] and "__" not in name
    check(plain, "--exp-name: a name without '/' or '__', under 100 characters")
    problem = unwritable(known.log_dir)
    check(problem is None, f"--log-dir {known.log_dir!r}: {problem}")
    # the script's own checks of its settings and env, in its own words
    a, refusal = throughput.script_args(known.script, known.env_id, tuple(flags))
    check(a is not None, refusal)
    return known, a


def main() -> None:
    known, a = parse_args()

    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from torch.utils.tensorboard import SummaryWriter

    # the script's checks flushed denormal floats, as its train does: SB3 runs as alone
    torch.set_flush_denormal(False)
    spec = throughput.COUNTERPARTS[known.script](a)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    exp_name = known.exp_name or f"sb3-{known.script.removesuffix('.py')}"
    run_name = f"{known.env_id}__{exp_name}__{known.seed}__{int(time.time())}"
    run_dir = os.path.join(known.log_dir, run_name)
    # Ctrl-C ends training at its next step (interrupted inside TensorBoard's writer,
    # closing it can hang) and skips the evaluation
    interrupted = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    writer = SummaryWriter(run_dir)
    settings = f"SB3 `{spec['algo']}`, n_envs={spec['n_envs']}, "
    settings += f"normalize={spec['normalize']}, {spec['kwargs']}"
    if "q_lr" in spec:
        settings += f", critics' and α's learning rate {spec['q_lr']}"
    writer.add_text("settings", settings, 0)

    class Log(BaseCallback):
        """charts/episodic_return from the Monitor wrapper's info["episode"],
        charts/SPS every 1,000 steps."""

        def _on_step(self) -> bool:
            step = self.num_timesteps
            for info in self.locals["infos"]:
                if "episode" in info:
                    episode = info["episode"]
                    writer.add_scalar("charts/episodic_return", episode["r"], step)
                    writer.add_scalar("charts/episodic_length", episode["l"], step)
            if step % 1000 < spec["n_envs"]:
                writer.add_scalar("charts/SPS", step / (time.time() - start), step)
            return not interrupted

    start = time.time()
    model = throughput.sb3_model(spec, known.env_id, known.seed)
    model.learn(a.total_timesteps, callback=Log())
    n = known.eval_episodes
    if n > 0 and not interrupted:
        eval_env = throughput.sb3_eval_env(spec, known.env_id, known.seed, model)
        mean, _ = evaluate_policy(
            model, eval_env, n_eval_episodes=n, deterministic=True
        )
        ret = float(mean)
        writer.add_scalar("eval/episodic_return", ret, model.num_timesteps)
        # the line every script prints after its evaluation
        print(f"eval/episodic_return {ret:.2f} over {n} episodes")
    writer.close()
    if interrupted:
        steps = f"{model.num_timesteps:,}"
        print(f"interrupted at step {steps}: run folder {run_dir}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # before training started
        print("interrupted: nothing run", file=sys.stderr)
        sys.exit(130)
