"""Turn a folder of runs into a tidy CSV, learning-curve plots and a markdown table.

  python benchmarks/report.py --log-dir benchmarks/runs \\
      --out benchmarks/results/classic --title "classic suite"

Reads every TensorBoard run under --log-dir (run.py's --out, or a plain `runs/` folder
the scripts wrote), whose folder is named {env_id}__{exp_name}__{seed}__{unix_time}.
Writes to --out:
- scalars.csv: one row per logged scalar: run, script, env, seed, step, tag, value
  (script = the run's exp name);
- {env}__{tag}.png: per env and tag, the mean over seeds and a band of ± one standard
  deviation, x = env steps;
- README.md: the command (notes given with --notes are saved as notes.md beside it
  and named with --notes-file, so that the command stays short), the notes as prose,
  then per env one row per script: final evaluation return and final training return
  (mean ± std over seeds), steps until the training return first reaches the
  threshold, steps per second, wall time, beside published numbers with their source
  (CleanRL and Spinning Up's on-policy curves publish a training return, RL Zoo an
  evaluation).

Curves and the threshold use the trailing mean of the last --window logged training
returns of each run; the threshold defaults to the env's registered reward_threshold
(CartPole-v1 475, Acrobot-v1 -100, ...). Standard deviations are over seeds, with
numpy's default ddof=0.

Bad input (a --window below 1, a missing --log-dir, a folder with no usable runs, an
--out that cannot be written) stops it with one line and exit code 2, nothing written.
"""

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cli, env_threshold, header, read_scalars, unwritable  # noqa: E402

RETURN = "charts/episodic_return"
EVAL = "eval/episodic_return"
SPS = "charts/SPS"
RL_ZOO = "https://github.com/DLR-RM/rl-baselines3-zoo/blob/master/benchmark.md"
RL_ZOO_NOTE = "RL-Zoo (SB3), one trained agent, ± over its evaluation episodes"
RL_ZOO_TRPO = RL_ZOO_NOTE + " (sb3-contrib)"
RL_ZOO_TD3 = (
    "RL-Zoo (SB3) TD3, no DDPG row, one trained agent, ± over its evaluation episodes"
)
CLEANRL = "https://docs.cleanrl.dev/rl-algorithms/"
CLEANRL_PPO = CLEANRL + "ppo/#experiment-results"
# its PPO on MuJoCo (Box) envs
CLEANRL_PPO_BOX = CLEANRL + "ppo/#experiment-results_2"
CLEANRL_DQN = CLEANRL + "dqn/#experiment-results_1"
CLEANRL_SAC = CLEANRL + "sac/#experiment-results"
CLEANRL_DDPG = CLEANRL + "ddpg/#experiment-results"
CLEANRL_NOTE = "CleanRL, 3 seeds, training episodic return"
CLEANRL_TRAIN = "CleanRL, training episodic return"
SPINUP = "https://spinningup.openai.com/en/latest/spinningup/bench.html"
# Spinning Up publishes curves only (v3 envs, 10 seeds, 3M steps, smoothed over 11
# epochs): these values were read off its SVG plots (results/mujoco-1m/spinning-up/),
# hence the ≈. On-policy curves: the training batch's return; off-policy: 10
# deterministic test episodes. It has TRPO only in TensorFlow.
SPINUP_ON = "Spinning Up (PyTorch), 10 seeds, training return, read off its plot"
SPINUP_TF = "Spinning Up (TensorFlow), 10 seeds, training return, read off its plot"
SPINUP_OFF = (
    "Spinning Up (PyTorch), 10 seeds, deterministic test return, read off its plot"
)
# Published results beside ours: (script stem, env) -> [(who, value, budget, source)].
# Only numbers read in the cited source; older env versions (Hopper-v3) differ from
# v5 in details.
PUBLISHED = {
    ("ppo", "CartPole-v1"): [
        (CLEANRL_NOTE, "490.04 ± 6.12", "500k", CLEANRL_PPO),
        (RL_ZOO_NOTE, "500.00 ± 0.00", "100k", RL_ZOO),
    ],
    ("ppo", "Acrobot-v1"): [
        (CLEANRL_NOTE, "-86.36 ± 1.32", "500k", CLEANRL_PPO),
        (RL_ZOO_NOTE, "-73.51 ± 18.20", "1M", RL_ZOO),
    ],
    ("ppo", "Hopper-v5"): [
        (CLEANRL_NOTE + ", Hopper-v4", "2382.86 ± 271.74", "1M", CLEANRL_PPO_BOX),
        (RL_ZOO_NOTE + ", Hopper-v3", "2410.44 ± 10.03", "1M", RL_ZOO),
        (SPINUP_ON + ", Hopper-v3", "≈1770 ± 500", "1M", SPINUP),
    ],
    ("ppo", "HalfCheetah-v5"): [
        (CLEANRL_NOTE + ", HalfCheetah-v4", "1442.64 ± 46.03", "1M", CLEANRL_PPO_BOX),
        (RL_ZOO_NOTE + ", HalfCheetah-v3", "5819.10 ± 663.53", "1M", RL_ZOO),
        (SPINUP_ON + ", HalfCheetah-v3", "≈1730 ± 520", "1M", SPINUP),
    ],
    ("ppo", "Walker2d-v5"): [
        (CLEANRL_NOTE + ", Walker2d-v4", "2287.95 ± 571.78", "1M", CLEANRL_PPO_BOX),
        (RL_ZOO_NOTE + ", Walker2d-v3", "3478.80 ± 821.71", "1M", RL_ZOO),
        (SPINUP_ON + ", Walker2d-v3", "≈1210 ± 320", "1M", SPINUP),
    ],
    ("dqn", "CartPole-v1"): [
        (CLEANRL_TRAIN, "488.69 ± 16.11", "500k", CLEANRL_DQN),
        (RL_ZOO_NOTE, "500.00 ± 0.00", "50k", RL_ZOO),
    ],
    ("dqn", "Acrobot-v1"): [
        (CLEANRL_TRAIN, "-91.54 ± 7.20", "500k", CLEANRL_DQN),
        (RL_ZOO_NOTE, "-76.64 ± 11.75", "100k", RL_ZOO),
    ],
    ("a2c", "CartPole-v1"): [(RL_ZOO_NOTE, "500.00 ± 0.00", "500k", RL_ZOO)],
    ("a2c", "Acrobot-v1"): [(RL_ZOO_NOTE, "-83.35 ± 17.21", "500k", RL_ZOO)],
    ("a2c", "Hopper-v5"): [
        (RL_ZOO_NOTE + ", Hopper-v3", "733.45 ± 376.57", "1M", RL_ZOO),
    ],
    ("a2c", "HalfCheetah-v5"): [
        (RL_ZOO_NOTE + ", HalfCheetah-v3", "3041.17 ± 157.27", "1M", RL_ZOO),
    ],
    # a2c on Walker2d: RL-Zoo's table has no row, CleanRL has no continuous A2C
    ("trpo", "CartPole-v1"): [(RL_ZOO_TRPO, "500.00 ± 0.00", "100k", RL_ZOO)],
    ("trpo", "Acrobot-v1"): [(RL_ZOO_TRPO, "-83.11 ± 18.65", "100k", RL_ZOO)],
    ("trpo", "Hopper-v5"): [
        (RL_ZOO_TRPO + ", Hopper-v3", "3618.39 ± 356.77", "1M", RL_ZOO),
        (SPINUP_TF + ", Hopper-v3", "≈1160 ± 320", "1M", SPINUP),
    ],
    ("trpo", "HalfCheetah-v5"): [
        (RL_ZOO_TRPO + ", HalfCheetah-v3", "1785.48 ± 68.67", "1M", RL_ZOO),
        (SPINUP_TF + ", HalfCheetah-v3", "≈720 ± 280", "1M", SPINUP),
    ],
    ("trpo", "Walker2d-v5"): [
        (RL_ZOO_TRPO + ", Walker2d-v3", "4933.15 ± 1452.54", "1M", RL_ZOO),
        (SPINUP_TF + ", Walker2d-v3", "≈560 ± 290", "1M", SPINUP),
    ],
    ("sac_continuous", "Hopper-v5"): [
        (CLEANRL_TRAIN + ", Hopper-v2", "2310.46 ± 342.82", "1M", CLEANRL_SAC),
        (RL_ZOO_NOTE + ", Hopper-v3", "2325.55 ± 1129.68", "1M", RL_ZOO),
        (SPINUP_OFF + ", Hopper-v3", "≈1160 ± 300", "100k", SPINUP),
        (SPINUP_OFF + ", Hopper-v3", "≈2890 ± 420", "300k", SPINUP),
        (SPINUP_OFF + ", Hopper-v3", "≈3540 ± 110", "1M", SPINUP),
    ],
    ("sac_continuous", "InvertedPendulum-v5"): [
        (CLEANRL_TRAIN + ", InvertedPendulum-v4", "909.37 ± 55.66", "1M", CLEANRL_SAC),
    ],
    ("sac_continuous", "HalfCheetah-v5"): [
        (CLEANRL_TRAIN + ", HalfCheetah-v2", "9634.89 ± 1423.73", "1M", CLEANRL_SAC),
        (RL_ZOO_NOTE + ", HalfCheetah-v3", "9535.45 ± 100.47", "1M", RL_ZOO),
        (SPINUP_OFF + ", HalfCheetah-v3", "≈6080 ± 470", "100k", SPINUP),
        (SPINUP_OFF + ", HalfCheetah-v3", "≈9160 ± 820", "300k", SPINUP),
        (SPINUP_OFF + ", HalfCheetah-v3", "≈11500 ± 790", "1M", SPINUP),
    ],
    ("sac_continuous", "Walker2d-v5"): [
        (CLEANRL_TRAIN + ", Walker2d-v2", "3591.45 ± 911.33", "1M", CLEANRL_SAC),
        (RL_ZOO_NOTE + ", Walker2d-v3", "3863.20 ± 254.35", "1M", RL_ZOO),
        (SPINUP_OFF + ", Walker2d-v3", "≈770 ± 290", "100k", SPINUP),
        (SPINUP_OFF + ", Walker2d-v3", "≈2960 ± 770", "300k", SPINUP),
        (SPINUP_OFF + ", Walker2d-v3", "≈4110 ± 510", "1M", SPINUP),
    ],
    # ddpg: CleanRL's table is on v4 (its older v2 figures now sit only under
    # ddpg_continuous_action_jax.py); RL-Zoo has no DDPG row for MuJoCo, so its TD3
    # (DDPG plus clipped double-Q, target smoothing, delayed actor) stands in
    ("ddpg", "Hopper-v5"): [
        (CLEANRL_NOTE + ", Hopper-v4", "1576.78 ± 818.98", "1M", CLEANRL_DDPG),
        (RL_ZOO_TD3 + ", Hopper-v3", "3606.39 ± 4.03", "1M", RL_ZOO),
        (SPINUP_OFF + ", Hopper-v3", "≈640 ± 110", "100k", SPINUP),
        (SPINUP_OFF + ", Hopper-v3", "≈1440 ± 240", "300k", SPINUP),
        (SPINUP_OFF + ", Hopper-v3", "≈1740 ± 400", "1M", SPINUP),
    ],
    ("ddpg", "InvertedPendulum-v5"): [
        (CLEANRL_NOTE + ", InvertedPendulum-v4", "642.68 ± 69.56", "1M", CLEANRL_DDPG),
    ],
    ("ddpg", "HalfCheetah-v5"): [
        (CLEANRL_NOTE + ", HalfCheetah-v4", "10374.07 ± 157.37", "1M", CLEANRL_DDPG),
        (RL_ZOO_TD3 + ", HalfCheetah-v3", "9655.67 ± 969.92", "1M", RL_ZOO),
        (SPINUP_OFF + ", HalfCheetah-v3", "≈4340 ± 1010", "100k", SPINUP),
        (SPINUP_OFF + ", HalfCheetah-v3", "≈7770 ± 1340", "300k", SPINUP),
        (SPINUP_OFF + ", HalfCheetah-v3", "≈10110 ± 980", "1M", SPINUP),
    ],
    ("ddpg", "Walker2d-v5"): [
        (CLEANRL_NOTE + ", Walker2d-v4", "1240.16 ± 390.10", "1M", CLEANRL_DDPG),
        (RL_ZOO_TD3 + ", Walker2d-v3", "4717.82 ± 46.30", "1M", RL_ZOO),
        (SPINUP_OFF + ", Walker2d-v3", "≈120 ± 50", "100k", SPINUP),
        (SPINUP_OFF + ", Walker2d-v3", "≈470 ± 250", "300k", SPINUP),
        (SPINUP_OFF + ", Walker2d-v3", "≈1920 ± 760", "1M", SPINUP),
    ],
}


@dataclass
class Args:
    log_dir: str = "benchmarks/runs"
    """folder searched for TensorBoard runs (at any depth)"""
    scripts: tuple[str, ...] = ()
    """only runs of these exp names (e.g. ppo sb3-ddpg); default: every run there"""
    out: str = "benchmarks/results/latest"
    """folder for scalars.csv, the PNGs and README.md"""
    title: str = "Benchmark results"
    """heading of README.md"""
    notes: str = ""
    """prose under the command (budgets, what the grid compares); saved as notes.md in
    --out, which the command line on the page names with --notes-file"""
    notes_file: Optional[str] = None
    """a markdown file whose text goes under the command as prose (not with --notes)"""
    curve_tags: tuple[str, ...] = (RETURN,)
    """tags to plot, one PNG per env and tag"""
    thresholds: dict[str, float] = field(default_factory=dict)
    """env id -> threshold (default: the env's return one)"""
    threshold_tag: str = RETURN
    """the tag compared with the threshold, e.g. charts/best_arm_prob for the bandits"""
    env_tags: dict[str, str] = field(default_factory=dict)
    """env id -> its own threshold tag, in a report of many envs"""
    window: int = 10
    """trailing mean over this many logged training returns, for curves and the
    threshold"""
    overlay: tuple[str, ...] = ()
    """tags drawn together in {env}__overlay.png, one panel per script"""
    final_tags: tuple[str, ...] = ()
    """tags whose last logged value (mean ± std over seeds) gets a table per env"""


@dataclass
class RunLog:
    run: str
    """folder name {env}__{exp}__{seed}__{time}"""
    script: str
    """exp name"""
    stem: str
    """the script's file stem, for published numbers"""
    env: str
    seed: int
    scalars: dict[str, list[tuple[int, float]]]
    wall_time: Optional[float] = None
    """seconds, start-up included (from run.py's run.json)"""
    code: Optional[str] = None
    """the commit the run was made at (from run.json)"""


def find_runs(log_dir: str, scripts: tuple[str, ...] = ()) -> list[RunLog]:
    """Every run under log_dir (of the exp names in scripts, if given), the newest
    where the same (env, exp, seed) ran twice; runs that failed (or whose run.json
    cannot be read) and runs that logged no scalar are skipped."""
    newest = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        run_dir = events.parent
        parts = run_dir.name.split("__")
        if len(parts) != 4 or not (parts[2].isdecimal() and parts[3].isdecimal()):
            continue
        env, exp, seed, stamp = parts
        if scripts and exp not in scripts:
            continue
        meta = {}
        record = run_dir.parent / "run.json"
        if record.exists():
            try:
                meta = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or meta.get("returncode") != 0:
                continue
        key = (env, exp, int(seed))
        if key not in newest or int(stamp) > newest[key][0]:
            newest[key] = (int(stamp), run_dir, meta)
    runs = []
    for (env, exp, seed), (_, run_dir, meta) in sorted(newest.items()):
        if "script" in meta:
            stem = Path(meta["script"]).stem
        else:
            stem = exp.split("-")[0]
        scalars = read_scalars(run_dir)
        if not scalars:
            continue
        wall_time = meta.get("wall_time")
        code = meta.get("code")
        runs.append(
            RunLog(run_dir.name, exp, stem, env, seed, scalars, wall_time, code)
        )
    return runs


def write_csv(runs: list[RunLog], path: Path):
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["run", "script", "env", "seed", "step", "tag", "value"])
        for r in runs:
            for tag, points in sorted(r.scalars.items()):
                for step, value in points:
                    out.writerow([r.run, r.script, r.env, r.seed, step, tag, value])


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """out[i] = mean(values[max(0, i − window + 1) : i + 1])."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


Points = list[tuple[int, float]]


def smoothed(points: Points, window: int) -> tuple[np.ndarray, np.ndarray]:
    steps, values = np.array(points, dtype=float).reshape(-1, 2).T
    return steps, trailing_mean(values, window)


def steps_to_threshold(points: Points, threshold: float, window: int) -> Optional[int]:
    """First step at which the trailing mean of the training return reaches the
    threshold, or None."""
    steps, values = smoothed(points, window)
    hit = np.flatnonzero(values >= threshold)
    if len(hit) == 0:
        return None
    return int(steps[hit[0]])


def band(curves: list[tuple[np.ndarray, np.ndarray]], points: int = 200):
    """Mean and std over seeds of curves interpolated onto one grid of steps that
    every seed covers."""
    lo = max(s[0] for s, _ in curves)
    hi = min(s[-1] for s, _ in curves)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([hi])
    ys = np.stack([np.interp(grid, s, v) for s, v in curves])
    return grid, ys.mean(0), ys.std(0)


def last(r: RunLog, tag: str) -> Optional[float]:
    return r.scalars[tag][-1][1] if r.scalars.get(tag) else None


def mean_std(values: list) -> Optional[tuple[float, float]]:
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else None


def summarize(
    runs: list[RunLog], threshold: Optional[float], window: int, tag: str = RETURN
) -> dict:
    """The table's figures for one (script, env) group of seeds."""
    hits = []
    finals = []
    for r in runs:
        hit = None
        if threshold is not None and r.scalars.get(tag):
            hit = steps_to_threshold(r.scalars[tag], threshold, window)
        hits.append(hit)
        final = None
        if r.scalars.get(RETURN):
            final = smoothed(r.scalars[RETURN], window)[1][-1]
        finals.append(final)
    budget = max(max(s for s, _ in pts) for r in runs for pts in r.scalars.values())
    return {
        "seeds": len(runs),
        "budget": budget,
        "eval": mean_std([last(r, EVAL) for r in runs]),
        "train": mean_std(finals),
        "reached": sum(h is not None for h in hits),
        "steps_to_threshold": mean_std(hits),
        "sps": mean_std([last(r, SPS) for r in runs]),
        "wall_time": mean_std([r.wall_time for r in runs]),
    }


def fmt(ms: Optional[tuple[float, float]], digits: int = 1) -> str:
    return "—" if ms is None else f"{ms[0]:,.{digits}f} ± {ms[1]:,.{digits}f}"


def pyplot():
    """matplotlib.pyplot, drawing to files only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(
    groups: dict[str, list[RunLog]],
    env: str,
    tag: str,
    threshold: Optional[float],
    threshold_tag: str,
    window: int,
    path: Path,
):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (script, runs) in enumerate(sorted(groups.items())):
        curves = [smoothed(r.scalars[tag], window) for r in runs if r.scalars.get(tag)]
        if not curves:
            continue
        # colour by the script's place among all of the env's scripts: the same in
        # every plot
        color = f"C{i % 10}"
        grid, mean, std = band(curves)
        ax.plot(grid, mean, color=color, label=f"{script} ({len(curves)} seeds)")
        ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2)
    if threshold is not None and tag == threshold_tag:
        label = f"threshold {threshold:g}"
        ax.axhline(threshold, color="grey", ls="--", lw=1, label=label)
    ylabel = tag
    if window > 1:
        ylabel += f" (trailing mean of {window})"
    ax.set(title=env, xlabel="environment steps", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_overlay(
    groups: dict[str, list[RunLog]],
    env: str,
    tags: tuple[str, ...],
    window: int,
    path: Path,
):
    """One panel per script, all on one y scale, each with the tags' mean ± std over
    seeds: e.g. the learned and the true reward of the same runs."""
    plt = pyplot()
    ncols = int(np.ceil(np.sqrt(len(groups))))
    nrows = int(np.ceil(len(groups) / ncols))
    figsize = (3.6 * ncols, 2.8 * nrows)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=figsize, sharex=True, sharey=True, squeeze=False
    )
    styles = ["-", "--", ":", "-."]
    for ax, (script, runs) in zip(axes.flat, sorted(groups.items())):
        for i, tag in enumerate(tags):
            curves = [
                smoothed(r.scalars[tag], window) for r in runs if r.scalars.get(tag)
            ]
            if not curves:
                continue
            grid, mean, std = band(curves)
            ax.plot(grid, mean, color=f"C{i}", ls=styles[i % 4], label=tag)
            ax.fill_between(grid, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        ax.set_title(f"{script} ({len(runs)} seeds)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("environment steps")
    fig.suptitle(env)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def final_table(groups: dict[str, list[RunLog]], tags: tuple[str, ...]) -> str:
    """The last logged value of each tag, mean ± std over seeds, one row per script."""
    columns = " | ".join(f"final {t}" for t in tags)
    lines = [f"| script | seeds | {columns} |", "|---|---|" + "---|" * len(tags)]
    for script, runs in groups.items():
        cells = [fmt(mean_std([last(r, t) for r in runs]), 2) for t in tags]
        lines.append(f"| {script} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def published(stem: str, env: str) -> str:
    """The published figures for a script on an env, with their sources, or —."""
    cites = []
    for who, value, budget, url in PUBLISHED.get((stem, env), []):
        cites.append(f"{value} at {budget}: [{who}]({url})")
    return "<br>".join(cites) or "—"


def table(
    env: str,
    groups: dict[str, list[RunLog]],
    threshold: Optional[float],
    window: int,
    tag: str = RETURN,
) -> str:
    t = "—" if threshold is None else f"{threshold:g}"
    if tag != RETURN:
        t = f"{tag.split('/')[-1]} {t}"
    columns = [
        "script",
        "seeds",
        "steps",
        "eval return",
        f"training return (last {window})",
        f"steps to {t} (seeds reaching it)",
        "steps/s",
        "wall time (s)",
        "published (source, budget)",
    ]
    lines = [f"## {env}\n", "| " + " | ".join(columns) + " |", "|---" * 9 + "|"]
    for script, runs in groups.items():
        s = summarize(runs, threshold, window, tag)
        reached = f"({s['reached']}/{s['seeds']})"
        cells = [
            script,
            str(s["seeds"]),
            f"{s['budget']:,}",
            fmt(s["eval"]),
            fmt(s["train"]),
            f"{fmt(s['steps_to_threshold'], 0)} {reached}",
            fmt(s["sps"], 0),
            fmt(s["wall_time"]),
            published(runs[0].stem, env),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def robustness(
    env: str,
    groups: dict[str, list[RunLog]],
    threshold: Optional[float],
    tag: str = RETURN,
) -> str:
    """Per script: how many seeds reach the threshold at the end, by the final
    evaluation when the threshold is about returns (else by the last value of its
    tag), the median and worst of them, and the median wall time: the figures a user
    running `--seed 5` cares about."""
    if tag == RETURN:
        tag = EVAL
    t = "—" if threshold is None else f"{threshold:g}"
    name = "eval" if tag == EVAL else f"final {tag}"
    columns = f"{name} ≥ {t} | median {name} | worst {name} (seed)"
    lines = [
        f"| script | seeds | {columns} | median wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for script, runs in groups.items():
        evals = {r.seed: last(r, tag) for r in runs if last(r, tag) is not None}
        if not evals:
            continue
        worst = min(evals, key=evals.get)
        reached = "—"
        if threshold is not None:
            reached = f"{sum(v >= threshold for v in evals.values())}/{len(evals)}"
        walls = [r.wall_time for r in runs if r.wall_time is not None]
        wall = f"{np.median(walls):.1f}" if walls else "—"
        median = np.median(list(evals.values()))
        # returns to 0.1; a probability like best_arm_prob to 0.001
        digits = 1 if abs(median) >= 10 else 3
        lines.append(
            f"| {script} | {len(evals)} | {reached} | {median:.{digits}f} | "
            f"{evals[worst]:.{digits}f} ({worst}) | {wall} |"
        )
    return "\n".join(lines) + "\n"


def reading_guide(args: Args) -> str:
    """What each column of the tables means."""
    return (
        "Eval return: the final `eval/episodic_return` (deterministic policy) of each "
        "seed, mean ± std over seeds. Training return: the mean of each seed's last "
        f"{args.window} logged `{RETURN}` (the exploring policy, as CleanRL reports), "
        "mean ± std over seeds. Steps to threshold: first step where the mean of the "
        f"last {args.window} logged values of `{args.threshold_tag}` (or the tag its "
        "table names) reaches it, averaged over the seeds that reach it. Steps/s: the "
        "script's own `charts/SPS` (training loop); wall time: the whole process, "
        "start-up and evaluation included.\n"
    )


def check(ok, msg: str):
    """Refuse bad input: one line on stderr, exit code 2, nothing written."""
    if not ok:
        print(f"error: benchmarks/report.py: {msg}", file=sys.stderr)
        sys.exit(2)


def check_args(args: Args):
    """Refuse settings no report can be made with, before anything is written."""
    both = args.notes and args.notes_file
    check(not both, "give --notes or --notes-file, not both")
    check(1 <= args.window <= 10**6, f"--window {args.window}: use 1 to 1,000,000")
    for env, threshold in args.thresholds.items():
        check(math.isfinite(threshold), f"--thresholds {env} {threshold}: not finite")
    check(os.path.isdir(args.log_dir), f"--log-dir {args.log_dir!r}: no folder there")
    problem = unwritable(args.out)
    check(problem is None, f"--out {args.out!r}: {problem}")


def notes_moved(argv: list[str], notes_file: str) -> list[str]:
    """argv with its --notes TEXT (or --notes=TEXT) replaced by --notes-file
    notes_file: the command line a results page shows."""
    shown = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--notes":
            next(rest, None)  # its text
        if arg == "--notes" or arg.startswith("--notes="):
            shown += ["--notes-file", notes_file]
        else:
            shown.append(arg)
    return shown


def main(args: Args) -> Path:
    check_args(args)
    notes = args.notes
    if args.notes_file:
        try:
            notes = Path(args.notes_file).read_text()
        except OSError as e:
            check(False, f"cannot read --notes-file {args.notes_file}: {e.strerror}")
        except ValueError:  # not UTF-8
            check(False, f"--notes-file {args.notes_file} is not UTF-8 text")
    runs = find_runs(args.log_dir, args.scripts)
    only = f" of {', '.join(args.scripts)}" if args.scripts else ""
    check(runs, f"no finished TensorBoard runs{only} with scalars under {args.log_dir}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        check(False, f"--out: cannot create {out}: {e.strerror}")
    argv = sys.argv
    if args.notes:
        # the notes go beside the page, so that its command line stays short
        notes_file = out / "notes.md"
        notes_file.write_text(notes.strip() + "\n")
        argv = notes_moved(argv, str(notes_file))
    write_csv(runs, out / "scalars.csv")
    by_env: dict[str, dict[str, list[RunLog]]] = {}
    for r in runs:
        by_env.setdefault(r.env, {}).setdefault(r.script, []).append(r)
    seeds = sorted({r.seed for r in runs})
    seed_list = ", ".join(map(str, seeds))
    seed_counts = f"{len(seeds)} per script and env ({seed_list})"
    sections = [header(args.title, seed_counts, argv)]
    if notes.strip():
        sections.append(notes.strip() + "\n")
    codes = sorted({r.code for r in runs if r.code})
    if codes:
        sections.append("Runs made at: " + "; ".join(codes) + "\n")
    sections.append(reading_guide(args))
    for env, groups in by_env.items():
        threshold = env_threshold(env, args.thresholds)
        tag = args.env_tags.get(env, args.threshold_tag)
        if tag != RETURN and env not in args.thresholds:
            # the env's reward threshold is about returns, not about another tag
            threshold = None
        sections.append(table(env, groups, threshold, args.window, tag))
        if args.final_tags:
            sections.append(final_table(groups, args.final_tags))
        if args.overlay:
            overlay = f"{env}__overlay.png"
            plot_overlay(groups, env, args.overlay, args.window, out / overlay)
            sections.append(f"![{env} {', '.join(args.overlay)}]({overlay})\n")
        sections.append(robustness(env, groups, threshold, tag))
        for curve in args.curve_tags:
            name = f"{env}__{curve.replace('/', '_')}.png"
            plot(groups, env, curve, threshold, tag, args.window, out / name)
            sections.append(f"![{env} {curve}]({name})\n")
    (out / "README.md").write_text("\n".join(sections))
    written = f"{out / 'scalars.csv'}, {out / 'README.md'}"
    print(f"wrote {written} and the plots of {len(runs)} runs")
    return out


if __name__ == "__main__":
    try:
        main(cli(Args, sys.argv[1:], check))
    except KeyboardInterrupt:
        print("interrupted: the report in --out may be incomplete", file=sys.stderr)
        sys.exit(130)
