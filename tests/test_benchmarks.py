"""benchmarks/: the grid runner (local and Ray backends, resume, failures), the
report's figures, the SB3 mapping."""

import csv
import io
import json
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import ROOT, load

sys.path.insert(0, str(ROOT / "benchmarks"))
import profile_run  # noqa: E402
import report  # noqa: E402
import run as grid  # noqa: E402
import throughput  # noqa: E402

TINY = (
    "--total-timesteps 256 --num-envs 2 --num-steps 64 --num-minibatches 2 "
    "--update-epochs 2 --eval-episodes 2"
)
BROKEN = "import sys\nprint('broken.py: something went wrong')\nsys.exit(3)\n"


def run_grid(tmp_path, *extra) -> subprocess.CompletedProcess:
    """ppo.py and a script that always fails, on CartPole-v1 with seeds 1 and 2, into
    tmp_path/runs."""
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py")]
    cmd += ["--scripts", "ppo.py", str(broken), "--seeds", "1", "2", f"--flags={TINY}"]
    cmd += ["--out", str(tmp_path / "runs"), "--workers", "2", *extra]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )


def check_grid(tmp_path, proc):
    """Both ppo runs finished with their logs in place; both broken runs are reported
    with their log tail."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count("FAILED (exit code 3)") == 2
    assert "broken.py: something went wrong" in proc.stdout
    assert "2/4 runs done" in proc.stdout
    for seed in (1, 2):
        run_dir = tmp_path / "runs" / f"CartPole-v1__ppo__{seed}"
        assert json.loads((run_dir / "run.json").read_text())["returncode"] == 0
        assert list(run_dir.glob(f"CartPole-v1__ppo__{seed}__*/events.out.tfevents.*"))
        assert "eval/episodic_return" in (run_dir / "stdout.log").read_text()
    args = report.Args(log_dir=str(tmp_path / "runs"), out=str(tmp_path / "report"))
    out = report.main(args)
    with open(out / "scalars.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["run", "script", "env", "seed", "step", "tag", "value"]
    # failed runs are left out
    assert {(r["script"], r["seed"]) for r in rows} == {("ppo", "1"), ("ppo", "2")}
    assert (out / "CartPole-v1__charts_episodic_return.png").stat().st_size > 1000
    assert "| ppo | 2 | 256 |" in (out / "README.md").read_text()


def test_benchmarks_local_grid_resumes_and_reports_failures(tmp_path):
    check_grid(tmp_path, run_grid(tmp_path))
    run_records = (tmp_path / "runs").glob("CartPole-v1__ppo__*/run.json")
    done = {p: p.read_text() for p in run_records}
    # the rerun skips both finished runs and tries the failed ones again
    proc = run_grid(tmp_path)
    assert "4 runs, 2 already done, 2 to run" in proc.stdout
    assert proc.stdout.count("FAILED") == 2
    assert "ok  CartPole-v1__ppo" not in proc.stdout
    assert {p: p.read_text() for p in done} == done


def test_benchmarks_ray_grid_gathers_logs(tmp_path):
    pytest.importorskip("ray")
    # a local Ray instance with --workers 2 CPUs
    check_grid(tmp_path, run_grid(tmp_path, "--backend", "ray"))


def test_benchmarks_ray_task_ships_what_sb3_run_needs():
    """A Ray task's folder holds only what shipped() sends: ppo.py alone, but for
    sb3_run.py also its neighbours in benchmarks/ and the algorithm scripts whose
    settings it maps. The task's function itself, without Ray, runs it."""
    assert grid.shipped("ppo.py")[1].keys() == {"ppo.py"}
    flags = ("--script", "ppo.py", *TINY.split())
    run = grid.Run("benchmarks/sb3_run.py", "CartPole-v1", 1, flags, "sb3-ppo")
    script, files = grid.shipped(run.script)
    assert script == "benchmarks/sb3_run.py"
    assert {"benchmarks/throughput.py", "benchmarks/common.py", "ppo.py"} <= set(files)
    record, archive = grid.execute_remote(run, script, files, 600, "test")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        log = tar.extractfile("./stdout.log").read().decode()
    assert record["returncode"] == 0, log[-3000:]
    assert "eval/episodic_return" in log
    assert any("events.out.tfevents" in n for n in names)


def test_benchmarks_suites_expand_to_present_scripts():
    present = {p.name for p in ROOT.glob("*.py")}
    discrete = set(grid.DISCRETE) & present
    runs = grid.expand(grid.Args(suite="classic"))
    assert {r.script for r in runs} == discrete
    assert {r.env_id for r in runs} == {"CartPole-v1", "Acrobot-v1"}
    assert {r.seed for r in runs} == {1, 2, 3}
    assert len(runs) == len({r.name for r in runs}) == 2 * 3 * len(discrete)
    args = grid.Args(suite="mujoco-short", seeds=(7,), flags="--eval-episodes 3")
    for r in grid.expand(args):
        kind = "off-policy" if r.script in grid.OFF_POLICY else "on-policy"
        budget = grid.MUJOCO_SHORT_FLAGS[kind].split()
        assert r.flags == (*budget, "--eval-episodes", "3")
        assert r.seed == 7
    # each script beside SB3 on the same settings and seeds
    for suite in ("mujoco-sb3", "halfcheetah-offpolicy"):
        runs = grid.expand(grid.Args(suite=suite))
        ours = {}
        sb3 = {}
        for r in runs:
            if r.exp_name == r.script.removesuffix(".py"):
                ours[(r.script, r.env_id, r.seed)] = r.flags
            if r.script == "benchmarks/sb3_run.py":
                sb3[(r.flags[1], r.env_id, r.seed)] = r.flags[2:]
        assert ours == sb3
        for (script, _, _), flags in ours.items():
            kind = "off-policy" if script in grid.OFF_POLICY else "on-policy"
            assert flags == tuple(grid.MUJOCO_SHORT_FLAGS[kind].split())
        sb3_names = {r.exp_name for r in runs if r.script == "benchmarks/sb3_run.py"}
        assert sb3_names == {"sb3-" + s.removesuffix(".py") for s, _, _ in ours}
    if "grpo_bandit.py" in present:
        runs = grid.expand(grid.Args(suite="grpo"))
        assert len({r.exp_name for r in runs}) == 3
        assert {r.seed for r in runs} == {1, 2, 3, 4, 5}


def test_benchmarks_suite_flags_parse_in_their_scripts():
    """Every suite's flags are flags its script still has (a renamed flag would fail
    each of its runs after the grid had started)."""
    commands = set()
    for suite in grid.SUITES:
        for r in grid.expand(grid.Args(suite=suite, seeds=(1,))):
            if r.script == "benchmarks/sb3_run.py":
                commands.add((r.flags[1], r.env_id, r.flags[2:]))
            elif r.script != "grpo_bandit.py":  # its env ids are bandits
                commands.add((r.script, r.env_id, r.flags))
    for script, env_id, flags in sorted(commands):
        throughput.resolved_args(script, env_id, flags)


def write_synthetic_run(log_dir, exp, seed, returns, eval_return, sps, wall_time):
    """A run as run.py leaves it: {env}__{exp}__{seed}/ with run.json and the
    TensorBoard run inside."""
    from torch.utils.tensorboard import SummaryWriter

    outer = log_dir / f"CartPole-v1__{exp}__{seed}"
    writer = SummaryWriter(str(outer / f"CartPole-v1__{exp}__{seed}__1700000000"))
    for step, value in returns:
        writer.add_scalar("charts/episodic_return", value, step)
    writer.add_scalar("charts/SPS", sps, returns[-1][0])
    writer.add_scalar("eval/episodic_return", eval_return, returns[-1][0])
    writer.close()
    record = {"script": f"{exp}.py", "returncode": 0, "wall_time": wall_time}
    (outer / "run.json").write_text(json.dumps(record))


def test_benchmarks_report_figures_match_hand_computed(tmp_path):
    steps = [100, 200, 300, 400]
    ppo_1 = list(zip(steps, [10, 20, 30, 40]))
    ppo_2 = list(zip(steps, [20, 40, 60, 80]))
    write_synthetic_run(tmp_path, "ppo", 1, ppo_1, 100.0, 1000.0, 10.0)
    write_synthetic_run(tmp_path, "ppo", 2, ppo_2, 200.0, 3000.0, 20.0)
    write_synthetic_run(tmp_path, "a2c", 1, list(zip(steps, [0, 0, 0, 0])), 0, 1, 1)
    assert [r.script for r in report.find_runs(str(tmp_path))] == ["a2c", "ppo", "ppo"]
    # --scripts: one report of part of a folder
    runs = report.find_runs(str(tmp_path), ("ppo",))
    assert [(r.script, r.seed, r.wall_time) for r in runs] == [
        ("ppo", 1, 10.0),
        ("ppo", 2, 20.0),
    ]
    # Trailing means over 2: seed 1 → 10, 15, 25, 35 (reaches 35 at step 400);
    # seed 2 → 20, 30, 50, 70 (at 300).
    s = report.summarize(runs, threshold=35.0, window=2)
    assert s["eval"] == (150.0, 50.0)
    assert s["sps"] == (2000.0, 1000.0)
    assert s["wall_time"] == (15.0, 5.0)
    assert s["steps_to_threshold"] == (350.0, 50.0)
    assert s["reached"] == 2
    assert s["budget"] == 400
    assert s["train"] == (52.5, 17.5)  # the last trailing means, 35 and 70
    assert report.summarize(runs, threshold=60.0, window=2)["reached"] == 1
    curves = [report.smoothed(r.scalars["charts/episodic_return"], 2) for r in runs]
    grid_steps, mean, std = report.band(curves)
    assert grid_steps[0] == 100 and grid_steps[-1] == 400
    assert mean[-1] == pytest.approx((35 + 70) / 2)
    assert std[-1] == pytest.approx(17.5)
    assert mean[0] == pytest.approx(15.0)
    assert std[0] == pytest.approx(5.0)
    table = report.table("CartPole-v1", {"ppo": runs}, 35.0, 2)
    row = "| ppo | 2 | 400 | 150.0 ± 50.0 | 52.5 ± 17.5 | 350 ± 50 (2/2) "
    row += "| 2,000 ± 1,000 | 15.0 ± 5.0 |"
    assert row in table
    assert "490.04 ± 6.12" in table  # CleanRL's published figure, with its source
    # the robustness table: seeds whose final evaluation reaches the threshold,
    # median and worst, median wall time
    robust = report.robustness("CartPole-v1", {"ppo": runs}, 150.0)
    assert "| ppo | 2 | 1/2 | 150.0 | 100.0 (1) | 15.0 |" in robust
    # ... or, for a threshold on another tag (grpo's best-arm probability), its last
    # value: here SPS, 1000 and 3000
    robust = report.robustness("b", {"ppo": runs}, 2000.0, report.SPS)
    assert "| ppo | 2 | 1/2 | 2000.0 | 1000.0 (1) | 15.0 |" in robust


def test_benchmarks_report_keeps_long_notes_out_of_the_command(tmp_path):
    """Long --notes go to notes.md beside the page and appear as prose below the
    command, whose line stays short and, copied, writes the same page again."""
    steps = [100, 200, 300, 400]
    write_synthetic_run(tmp_path, "ppo", 1, list(zip(steps, [10, 20, 30, 40])), 1, 1, 1)
    notes = "Runs: `python benchmarks/run.py --suite classic`. " + "Details. " * 200
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "report.py")]
    cmd += ["--log-dir", str(tmp_path), "--out", str(out), "--notes", notes]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    page = (out / "README.md").read_text()
    (command,) = [line for line in page.splitlines() if line.startswith("- Command:")]
    assert len(command) < 400
    assert f"--notes-file {out / 'notes.md'}" in command
    assert (out / "notes.md").read_text() == notes.strip() + "\n"
    assert page.index(notes.strip()) > page.index(command)
    copied = shlex.split(command.removeprefix("- Command: ").strip("`"))
    assert copied[:2] == ["python", "benchmarks/report.py"]
    proc = subprocess.run(
        [sys.executable, *copied[1:]], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr

    def without_code_line(text):  # the checkout may change between the two runs
        return [line for line in text.splitlines() if not line.startswith("- Code:")]

    again = (out / "README.md").read_text()
    assert without_code_line(again) == without_code_line(page)


def test_benchmarks_throughput_sb3_ppo_matches_our_settings_and_network():
    a = throughput.resolved_args("ppo.py", "CartPole-v1", ())
    spec = throughput.sb3_ppo(a)
    kw = spec["kwargs"]
    sizes = (spec["n_envs"], kw["n_steps"], kw["batch_size"], kw["n_epochs"])
    assert sizes == (8, 32, 256, 20)
    rates = (kw["learning_rate"], kw["gamma"], kw["gae_lambda"], kw["clip_range"])
    assert rates == (("linear", 1e-3), 0.98, 0.8, 0.2)
    ppo = load("ppo.py")
    ours = ppo.Agent(*ppo.env_spaces("CartPole-v1"), a.hidden, a.normalize)
    model = throughput.sb3_model(spec, "CartPole-v1", seed=1)
    count = [sum(p.numel() for p in m.parameters()) for m in (ours, model.policy)]
    assert count[0] == count[1]  # the same two 64-wide tanh MLPs on both sides
    # Both sides and the env-only loop run and report their rates (here in this
    # process, tiny budgets).
    sides = [
        throughput.sb3_child(spec, "CartPole-v1", 256, 1, 1, 1),
        throughput.ours_child("ppo.py", "CartPole-v1", tuple(TINY.split()), 1, 1),
        throughput.env_child("CartPole-v1", 2, 200, 0) | {"eval": 1.0},
    ]
    for side in sides:
        assert side["sps"] > 0 and side["cpu_sps"] > 0 and side["eval"] > 0
    # both training sides report their episodes, in time order, with CartPole returns
    t0 = time.time()
    for side in sides[:2]:
        times = [t for t, _ in side["episodes"]]
        assert side["episodes"] and times == sorted(times) and times[-1] <= t0
        assert all(1 <= r <= 500 for _, r in side["episodes"])


def test_benchmarks_throughput_time_to_threshold_by_hand():
    # 12 episodes ending at t = 101 ... 112 s of a process started at t = 100 s: the
    # mean of the last 10 returns first reaches 100 at the 11th episode (returns 1-10
    # are 91-100, mean 95.5; the 11th adds 150: (92 + ... + 100 + 150) / 10 = 101.4;
    # the 12th adds 90: 101.2)
    returns = [91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 150, 90]
    side = {"start": 100.0, "episodes": [(101.0 + i, r) for i, r in enumerate(returns)]}
    assert throughput.time_to_threshold(side, 100.0) == 11.0
    assert throughput.time_to_threshold(side, 101.4) == 11.0
    assert throughput.time_to_threshold(side, 101.5) is None
    assert throughput.time_to_threshold(side, None) is None
    # fewer than 10 episodes never count
    side["episodes"] = side["episodes"][:9]
    assert throughput.time_to_threshold(side, 0.0) is None


MAPPED = [s for s in throughput.COUNTERPARTS if (ROOT / s).exists()]


@pytest.mark.parametrize("script", MAPPED)
def test_benchmarks_throughput_sb3_counterparts_accept_the_mapped_settings(script):
    env_id, flags = throughput.PLAN[script]
    a = throughput.resolved_args(script, env_id, flags)
    spec = throughput.COUNTERPARTS[script](a)
    model = throughput.sb3_model(spec, env_id, seed=1)
    assert model.n_envs == getattr(a, "num_envs", 1)
    assert model.gamma == a.gamma
    if script == "dqn.py":  # the same n-step targets
        assert model.replay_buffer.n_steps == a.n_step > 1
        assert model.replay_buffer.gamma == a.gamma
    if script == "sac_continuous.py":
        # SB3 has one learning rate; the critics and α get ours (q_lr) all the same
        optimizers = [
            model.actor.optimizer,
            model.critic.optimizer,
            model.ent_coef_optimizer,
        ]
        model._update_learning_rate(optimizers)
        lrs = [o.param_groups[0]["lr"] for o in optimizers]
        assert lrs == [a.policy_lr, a.q_lr, a.q_lr] != [a.q_lr] * 3


def test_benchmarks_sb3_trpo_takes_trpo_py_step_on_the_same_batch():
    """sb3-contrib's KL of a diagonal Gaussian is the mean over action dimensions,
    ours the sum: with its target_kl (our trust-region radius δ, --max-kl) and
    cg_damping divided by |A| (the mapping), its natural-gradient step from the same
    θ_old on the same batch is ours."""
    import torch
    from stable_baselines3.common.logger import Logger

    trpo = load("trpo.py")
    a = throughput.resolved_args("trpo.py", "Hopper-v5", ())
    model = throughput.sb3_model(throughput.sb3_trpo(a), "Hopper-v5", seed=1)
    sb3, buf = model.policy, model.rollout_buffer
    obs_space, act_space = model.observation_space, model.action_space
    ours = trpo.Agent(obs_space, act_space, a.hidden, normalize=False)
    theirs = sb3.mlp_extractor.policy_net
    pairs = [
        (ours.actor[0], theirs[0]),
        (ours.actor[2], theirs[2]),
        (ours.actor[4], sb3.action_net),
    ]
    torch.manual_seed(0)
    n = buf.buffer_size * buf.n_envs
    with torch.no_grad():
        for mine, their in pairs:
            mine.weight.copy_(their.weight)
            mine.bias.copy_(their.bias)
        sb3.log_std.copy_(torch.randn(3) * 0.3)
        ours.log_std.copy_(sb3.log_std)
        obs, adv = torch.randn(n, 11), torch.randn(n)
        act = ours.sample(obs)
        logp, _ = ours.logp_entropy(obs, act)
        batch = {
            "observations": obs,
            "actions": act,
            "advantages": adv,
            "returns": adv,
            "values": adv,
            "log_probs": logp,
        }
        for name, x in batch.items():
            getattr(buf, name)[:] = x.reshape(getattr(buf, name).shape).numpy()
    buf.full, buf.generator_ready = True, False

    def flat(layers, log_std):
        """one side's actor parameters as a vector, in the same order on both sides"""
        params = [x.detach().reshape(-1) for m in layers for x in (m.weight, m.bias)]
        return torch.cat(params + [log_std.detach()])

    sides = [
        ([m for m, _ in pairs], ours.log_std),
        ([m for _, m in pairs], sb3.log_std),
    ]
    theta_old = flat(*sides[0])
    model.set_logger(Logger(None, []))
    model.train()  # one trust-region step of the actor (then its critic regression)
    normalized = (adv - adv.mean()) / (adv.std() + 1e-8)
    stats = trpo.trpo_update(ours, obs, act, normalized, a)
    assert stats["line_search_accepted"] == 1.0
    assert 0 < stats["kl"] <= a.max_kl
    step = [flat(*side) - theta_old for side in sides]
    atol = 1e-3 * step[0].abs().max().item()
    torch.testing.assert_close(step[1], step[0], rtol=0, atol=atol)


def test_benchmarks_sb3_run_logs_like_our_scripts(tmp_path):
    """An SB3 run through sb3_run.py, as run.py starts it, writes the tags report.py
    reads, at the budget asked, and prints the eval line our scripts print."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sb3_run.py")]
    cmd += ["--script", "ppo.py", "--env-id", "CartPole-v1", "--seed", "1"]
    cmd += ["--log-dir", str(tmp_path), "--no-progress", *TINY.split()]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evals = [
        x for x in proc.stdout.splitlines() if x.startswith("eval/episodic_return")
    ]
    assert len(evals) == 1 and evals[0].endswith(" over 2 episodes"), proc.stdout
    (run_dir,) = tmp_path.glob("CartPole-v1__sb3-ppo__1__*")
    scalars = report.read_scalars(run_dir)
    assert scalars["charts/episodic_return"]
    assert 256 <= scalars["eval/episodic_return"][0][0] < 256 + 128
    assert all(0 < v <= 500 for _, v in scalars["charts/episodic_return"])


def test_benchmarks_throughput_learning_phase_starts_at_the_first_minibatch():
    class Buffer:
        def sample(self, n):
            return 2 * n

    # ours wraps the class's method, SB3's runs wrap the model's buffer
    for owner in (Buffer, Buffer()):
        stamps = {}
        throughput.stamp_first_call(owner, "sample", stamps)
        buffer = Buffer() if owner is Buffer else owner
        assert "learn" not in stamps
        assert buffer.sample(3) == 6  # the call passes through
        first = stamps["learn"]
        buffer.sample(4)
        assert stamps["learn"] == first  # only the first call starts the clock
    # 1,500 steps, 500 of them random; the first minibatch at wall 10 s / CPU 4 s, the
    # end at 20 s / 9 s
    first_minibatch = {"learn": (10.0, 4.0)}
    rates = throughput.learning_rates(1500, 500, first_minibatch, (20.0, 9.0))
    assert rates == {"learn_sps": 100.0, "learn_cpu_sps": 200.0, "learn_steps": 1000}
    # on-policy: none
    assert throughput.learning_rates(1500, None, first_minibatch, (20.0, 9.0)) == {}
    flags = ("--total-timesteps", "1500")
    a = throughput.resolved_args("sac_continuous.py", "Hopper-v5", flags)
    side = {"sps": 1.0, "cpu_sps": 1.0, "wall": 1.0, "cpu": 1.0}
    rounds = []
    for o in (150.0, 120.0, 200.0):
        ours = {"learn_steps": 1000, "learn_sps": o, "learn_cpu_sps": o / 2}
        sb3 = {"learn_steps": 1000, "learn_sps": 100.0, "learn_cpu_sps": 25.0}
        rounds.append(
            {
                "ours": side | {"eval": 0.0} | ours,
                "sb3": side | {"eval": 0.0} | sb3,
                "env": side,
            }
        )
    plan = dict(script="sac_continuous.py", env_id="Hopper-v5", flags=(), args=a)
    plan |= dict(sb3=throughput.sb3_sac(a), rounds=rounds)
    lines = throughput.markdown([plan], throughput.Args(repeats=3)).splitlines()
    # ratios per round 1.5, 1.2, 2 (wall) and 3, 2.4, 4 (CPU): medians 1.5 and 3
    row = "| sac_continuous.py | Hopper-v5 | 1,000 | 150 | 100 | **1.50×** | 75 | 25 "
    row += "| **3.00×** |"
    assert row in lines


def test_benchmarks_throughput_ratios_are_medians_of_paired_rounds():
    flags = ("--total-timesteps", "1000")
    a = throughput.resolved_args("ppo.py", "CartPole-v1", flags)
    rounds = []
    for o, s in [(300.0, 100.0), (100.0, 100.0), (400.0, 200.0)]:
        ours = {"sps": o, "cpu_sps": 2 * o, "wall": 10.0, "cpu": 5.0, "eval": 500.0}
        sb3 = {"sps": s, "cpu_sps": 200.0, "wall": 20.0, "cpu": 8.0, "eval": 400.0}
        env = {"sps": 9_000.0, "cpu_sps": 10_000.0, "wall": 3.0, "cpu": 2.0}
        rounds.append({"ours": ours, "sb3": sb3, "env": env})
    plan = dict(script="ppo.py", env_id="CartPole-v1", flags=(), args=a)
    plan |= dict(sb3=throughput.sb3_ppo(a), rounds=rounds)
    lines = throughput.markdown([plan], throughput.Args(repeats=3)).splitlines()
    # Wall ratios per round 3, 1, 2 → median 2 (the ratio of the medians, 300/100,
    # would be 3); CPU ratios 3, 1, 4 → 3; ours over env-only (CPU) 0.06, 0.02, 0.08
    # → 0.06.
    speed = (
        "| ppo.py | CartPole-v1 | 1,000 | PPO | 300 | 100 | **2.00×** | 600 | 200 "
        "| **3.00×** | 10,000 | **0.06×** |"
    )
    assert speed in lines
    whole = (
        "| ppo.py | CartPole-v1 | 500.0 (3/3 ≥ 475) | 400.0 (0/3 ≥ 475) | 10.0 | 5.0 "
        "| 20.0 | 8.0 |"
    )
    assert whole in lines


def test_benchmarks_profile_sorts_each_sample_into_its_stage():
    """profile_run.classify on stacks written by hand in py-spy's collapsed form: the
    first matching rule of its docstring decides the row."""
    top = "<module> (ppo.py:870);main (ppo.py:861);train (ppo.py:576)"
    collect = top + ";collect_rollout (ppo.py:300)"
    cases = {
        "<module> (ppo.py:10);_find_and_load (<frozen importlib>:1)": "outside train()",
        top: "train · other",
        collect + ";step (gymnasium/vector/sync_vector_env.py:200)": "env",
        collect
        + ";__call__ (torch/nn/modules/module.py:1)": "collect_rollout · forward",
        collect + ";explore (ppo.py:210)": "collect_rollout · other",
        top + ";update (ppo.py:400);backward (torch/_tensor.py:5)": "backward",
        top + ";update (ppo.py:400);step (torch/optim/adam.py:9)": "optimizer step",
        top + ";log (ppo.py:800);add_scalar (torch/utils/tensorboard/writer.py:1)": (
            "TensorBoard"
        ),
        # the env rule comes first: a network inside a wrapper counts to the env
        collect
        + ";step (gymnasium/core.py:1);forward (torch/nn/modules/linear.py:1)": "env",
        # another file's train is not the script's
        "<module> (x.py:1);train (other.py:1);step (torch/optim/sgd.py:1)": (
            "outside train()"
        ),
    }
    for stack, row in cases.items():
        assert profile_run.classify(stack, "ppo.py") == row, stack
