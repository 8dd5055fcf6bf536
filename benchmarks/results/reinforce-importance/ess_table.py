"""The table of notes.md, read from report.py's scalars.csv beside this file. Per
variant, over all updates of its seeds: the importance weights' ESS/N
(diagnostics/ess, the mean over steps 2..K of an update), by the mean length of the
episodes the update used (those logged since the previous update's scalars); their
largest weight (diagnostics/max_weight, over steps 2..K); the final evaluation
return, mean ± std over seeds.

  python benchmarks/results/reinforce-importance/ess_table.py
"""

import csv
import statistics
from collections import defaultdict
from pathlib import Path

BINS = [(0, 100), (100, 400), (400, 501)]  # mean episode length of the batch


def median(values, digits="3f"):
    if not values:
        return "—"
    return f"{statistics.median(values):.{digits}} (n = {len(values)})"


def main():
    rows = list(csv.DictReader(open(Path(__file__).with_name("scalars.csv"))))
    series = defaultdict(dict)  # (variant, seed, tag) -> {step: value}
    lengths = defaultdict(list)  # (variant, seed) -> [(step, length)]
    final = defaultdict(dict)  # variant -> {seed: final eval return}
    for row in rows:
        key = (row["script"], row["seed"])
        step, value = int(row["step"]), float(row["value"])
        if row["tag"] == "charts/episodic_length":
            lengths[key].append((step, value))
        elif row["tag"] == "eval/episodic_return":
            final[row["script"]][row["seed"]] = value
        else:
            series[key + (row["tag"],)][step] = value
    ess = defaultdict(list)  # (variant, bin) -> ESS/N of each update
    heaviest = defaultdict(list)  # (variant, bin) -> largest weight of each update
    for (variant, seed), logged in lengths.items():
        by_step = series[variant, seed, "diagnostics/ess"]
        weights = series[variant, seed, "diagnostics/max_weight"]
        previous = -1
        for step in sorted(by_step):
            batch = [length for s, length in logged if previous < s <= step]
            previous = step
            mean = statistics.mean(batch)
            for low, high in BINS:
                if low <= mean < high:
                    ess[variant, low].append(by_step[step])
                    heaviest[variant, low].append(weights[step])
    head = ["variant"]
    head += [f"median ESS/N, episodes {a}-{b - 1} steps" for a, b in BINS]
    head += ["10th percentile ESS/N, episodes ≥ 400 steps"]
    head += ["median max weight, episodes ≥ 400 steps", "largest weight"]
    head += ["eval return (3 seeds)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for variant in sorted(final):
        cells = [median(ess[variant, low]) for low, _ in BINS]
        long = ess[variant, 400]
        cells.append(f"{statistics.quantiles(long, n=10)[0]:.3f}" if long else "—")
        cells.append(median(heaviest[variant, 400], "3g"))
        every = [w for low, _ in BINS for w in heaviest[variant, low]]
        cells.append(f"{max(every):.3g}" if every else "—")
        returns = list(final[variant].values())
        mean, std = statistics.mean(returns), statistics.pstdev(returns)
        cells.append(f"{mean:.1f} ± {std:.1f}")
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
