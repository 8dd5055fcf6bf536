"""One Stable-Baselines3 / sb3-contrib training run with the settings of one of our scripts, logged like our scripts,
so that run.py can put it in a grid and report.py can plot it beside ours.

  python benchmarks/sb3_run.py --script sac_continuous.py --env-id Hopper-v5 --seed 1 --total-timesteps 30000
  python benchmarks/run.py --scripts benchmarks/sb3_run.py --flags="--script trpo.py" --env-ids CartPole-v1

Every flag other than --script, --env-id, --seed, --exp-name, --log-dir and --no-progress goes to the script's own
Args; the resolved settings are mapped onto SB3 exactly as throughput.py maps them (same networks, batch sizes,
epochs, learning rates, torch threads). The run writes charts/episodic_return (every finished training episode),
charts/SPS and eval/episodic_return (10 deterministic episodes at the end) to
{log_dir}/{env_id}__{exp_name}__{seed}__{unix_time}, and prints the eval line every script prints. It imports
throughput.py from beside it; as a Ray task, run.py sends that and the algorithm scripts along.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import COUNTERPARTS, resolved_args, sb3_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--script", required=True, choices=sorted(COUNTERPARTS), help="whose settings SB3 runs with")
    p.add_argument("--env-id", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--exp-name", default="", help="default: sb3-{script stem}")
    p.add_argument("--log-dir", default="runs")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--no-progress", action="store_true", help="accepted for run.py; SB3 runs print no progress")
    known, flags = p.parse_known_args()

    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize
    from torch.utils.tensorboard import SummaryWriter

    a = resolved_args(known.script, known.env_id, tuple(flags))
    spec = COUNTERPARTS[known.script](a)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    exp_name = known.exp_name or f"sb3-{known.script.removesuffix('.py')}"
    run_dir = os.path.join(known.log_dir, f"{known.env_id}__{exp_name}__{known.seed}__{int(time.time())}")
    writer = SummaryWriter(run_dir)
    q_lr = f", critics' and α's learning rate {spec['q_lr']}" if "q_lr" in spec else ""
    writer.add_text("settings", f"SB3 `{spec['algo']}`, n_envs={spec['n_envs']}, normalize={spec['normalize']}, "
                                f"{spec['kwargs']}{q_lr}", 0)  # fmt: skip

    class Log(BaseCallback):
        """charts/episodic_return from the Monitor wrapper's info["episode"], charts/SPS every 1,000 steps."""

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    writer.add_scalar("charts/episodic_return", info["episode"]["r"], self.num_timesteps)
                    writer.add_scalar("charts/episodic_length", info["episode"]["l"], self.num_timesteps)
            if self.num_timesteps % 1000 < spec["n_envs"]:
                writer.add_scalar("charts/SPS", self.num_timesteps / (time.time() - start), self.num_timesteps)
            return True

    start = time.time()
    model = sb3_model(spec, known.env_id, known.seed)
    model.learn(a.total_timesteps, callback=Log())
    if known.eval_episodes > 0:
        eval_env = make_vec_env(known.env_id, n_envs=1, seed=known.seed + 10_000)
        if spec["normalize"]:  # observations normalised with the training statistics, frozen
            eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
            eval_env.obs_rms = model.get_env().obs_rms
        ret = float(evaluate_policy(model, eval_env, n_eval_episodes=known.eval_episodes, deterministic=True)[0])
        writer.add_scalar("eval/episodic_return", ret, model.num_timesteps)
        print(f"eval/episodic_return {ret:.2f} over {known.eval_episodes} deterministic episodes")
    writer.close()


if __name__ == "__main__":
    main()
