"""The promises every script keeps: --help, one-line errors with exit code 2, determinism, running alone,
and identical copies of the blocks that the conventions say are shared."""

import ast
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CASES, ONE_THREAD, PRESENT, ROOT, load, read_scalars, run_script, train_cli

# Top-level functions and classes that are the same block wherever a script has them (CONVENTIONS.md, section 7).
SHARED_BLOCKS = ["Diverged", "fail", "check", "check_finite", "check_spaces", "env_spaces", "prepare", "check_common",
                 "setup", "check_rendering", "make_envs", "new_folder", "Run", "evaluate", "evaluate_saved",
                 "flag_value", "parse_args", "main", "layer_init", "RunningMeanStd", "RewardScale",
                 "explained_variance", "num_iterations", "compute_gae", "final_observations", "ReplayBuffer",
                 "polyak_update", "scale_action"]  # fmt: skip
# grpo_bandit.py has no gym env: these plumbing blocks are its own (its bandits are not envs; no videos to record).
GRPO_OWN = {"env_spaces", "prepare", "check_common", "setup", "check_rendering", "make_envs", "Run", "evaluate",
            "evaluate_saved", "parse_args"}  # fmt: skip
# dqn.py's ReplayBuffer also stores each transition's γ^m, for its n-step targets
OWN = {("grpo_bandit.py", b) for b in GRPO_OWN} | {("dqn.py", "ReplayBuffer")}
# The common Args fields every script has (grpo_bandit.py has no --capture-video); all but threads, env_id,
# total_timesteps and num_envs (whose defaults depend on the algorithm) are the same line everywhere.
COMMON_FIELDS = ["exp_name", "seed", "torch_deterministic", "device", "threads", "env_id", "log_dir", "save_model",
                 "eval_model", "eval_episodes", "capture_video", "progress", "total_timesteps"]  # fmt: skip
SAME_LINE_FIELDS = [f for f in COMMON_FIELDS if f not in ("threads", "env_id", "total_timesteps")]


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("script", PRESENT)
def test_contract_help(script, tmp_path):
    proc = run_script(ROOT / script, ["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--env-id", "--seed", "--total-timesteps", "--save-model", "--eval-model", "--device"):
        assert flag in proc.stdout


@pytest.mark.parametrize("script", PRESENT)
def test_contract_bad_input_exits_2_with_one_line(script, tmp_path):
    logs = tmp_path / "runs"
    case = CASES[script]
    proc = run_script(ROOT / script, ["--env-id", "NoSuchEnv-v0", "--log-dir", str(logs)], tmp_path)
    assert_one_line_error(proc, "NoSuchEnv-v0")
    proc = run_script(ROOT / script, case["inconsistent"] + ["--log-dir", str(logs)], tmp_path)
    assert_one_line_error(proc)
    if case.get("wrong_space"):
        proc = run_script(ROOT / script, ["--env-id", case["wrong_space"], "--log-dir", str(logs)], tmp_path)
        assert_one_line_error(proc, case["wrong_space"])
    assert not logs.exists(), "a refused run must write nothing"


@pytest.mark.parametrize("script", PRESENT)
def test_contract_same_seed_same_scalars(script, tmp_path):
    runs = [train_cli(script, CASES[script]["tiny"] + ["--log-dir", str(tmp_path / d), "--device", "cpu"])
            for d in ("a", "b")]  # fmt: skip
    a, b = (read_scalars(r["run_dir"]) for r in runs)
    timing = {"charts/SPS"}
    assert set(a) == set(b) and len(set(a) - timing) > 3
    for tag in set(a) - timing:
        assert a[tag] == b[tag], tag
    assert math.isfinite(runs[0]["eval_return"]) and runs[0]["eval_return"] == runs[1]["eval_return"]


@pytest.mark.parametrize("script", PRESENT)
def test_contract_runs_alone_in_an_empty_folder(script, tmp_path):
    shutil.copy(ROOT / script, tmp_path / script)
    proc = run_script(tmp_path / script, CASES[script]["tiny"] + ["--save-model"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval/episodic_return" in proc.stdout
    assert list((tmp_path / "runs").glob("*/events.out.tfevents.*")) and list((tmp_path / "runs").glob("*/*.pt"))


def top_level_sources(script: str) -> dict[str, str]:
    src = (ROOT / script).read_text()
    nodes = ast.parse(src).body
    return {n.name: ast.get_source_segment(src, n) for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def args_fields(script: str) -> dict[str, str]:
    """Args field name -> its source line (annotation, default and help comment)."""
    lines = (ROOT / script).read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    args = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Args")
    return {n.target.id: lines[n.lineno - 1].strip() for n in args.body if isinstance(n, ast.AnnAssign)}


def test_contract_shared_blocks_identical():
    sources = {script: top_level_sources(script) for script in PRESENT}
    for block in SHARED_BLOCKS:
        copies = {s: src[block] for s, src in sources.items() if block in src and (s, block) not in OWN}
        assert len(set(copies.values())) <= 1, f"{block} differs between {sorted(copies)}"
    for script in PRESENT:  # the banner, and below it only shared blocks
        lines = (ROOT / script).read_text().splitlines()
        banner = [i for i, line in enumerate(lines) if line.startswith("#") and "identical in every script" in line]
        assert len(banner) == 1, script
        below = [n for n in ast.parse("\n".join(lines)).body if n.lineno > banner[0] + 1]
        names = {n.name for n in below if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert names <= set(SHARED_BLOCKS), f"{script}: {names - set(SHARED_BLOCKS)} below the banner"
    fields = {script: args_fields(script) for script in PRESENT}
    for script, f in fields.items():
        common = set(COMMON_FIELDS) - ({"capture_video"} if script == "grpo_bandit.py" else set())
        assert common <= set(f), f"{script}: Args lacks {common - set(f)}"
    for name in SAME_LINE_FIELDS:
        assert len({f[name] for f in fields.values() if name in f}) == 1, f"Args.{name} differs between scripts"


# ── Faults (issue 18): every script stops loudly on bad input and divergence, and loses nothing on Ctrl-C ──────


def run_main(module, argv, monkeypatch, capsys) -> tuple[int, str, str]:
    """module.main() in this process as `python script argv` would run it: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv, "--no-progress"])
    try:
        module.main()
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def bad_inputs(script: str, tmp_path) -> list[list[str]]:
    """Command lines that every script must refuse in one line, before training."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    lr_flag = CASES[script]["lr_flag"]
    cases = [["--seed", "-1"], ["--seed", str(2**32)], ["--threads", "-3"], ["--log-dir", str(a_file)],
             ["--exp-name", "my/exp", "--save-model"], [lr_flag, "inf"], [lr_flag, "nan"], [lr_flag, "0"],
             ["--hidden", "0"], ["--eval-episodes", "-1"]]  # fmt: skip
    return [CASES[script]["tiny"] + c for c in cases] + [c for c in CASES[script].get("bad", [])]


@pytest.mark.parametrize("script", PRESENT)
def test_contract_bad_input_refused_before_training(script, tmp_path, monkeypatch, capsys):
    module = load(script)
    for argv in bad_inputs(script, tmp_path):
        logs = tmp_path / "runs"
        code, out, err = run_main(module, ["--log-dir", str(logs)] + argv, monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, code, err)
        assert not logs.exists(), argv


@pytest.mark.parametrize("script", PRESENT)
def test_contract_eval_model_refuses_files_it_cannot_use(script, tmp_path, monkeypatch, capsys):
    module = load(script)
    other = "dqn.py" if script != "dqn.py" else "ppo.py"
    files = {"empty": b"", "text": b"101\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict")
    torch.save(torch.zeros(3), tmp_path / "tensor")
    torch.save({"script": other, "args": {}, "model": {}}, tmp_path / "other")
    for name in ["empty", "text", "state_dict", "tensor", "other", "missing"]:
        code, out, err = run_main(module, ["--eval-model", str(tmp_path / name)], monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert name != "other" or f"saved by {other}" in lines[0], lines
    code, out, err = run_main(module, ["--eval-model", str(tmp_path / "other"), "--eval-episodes", "0"], monkeypatch,
                              capsys)  # fmt: skip
    assert code == 2 and err.strip() == f"error: {script}: --eval-model needs --eval-episodes >= 1", err


@pytest.mark.parametrize("script", PRESENT)
def test_contract_divergence_stops_with_one_line_and_no_model(script, tmp_path):
    """A learning rate large enough to overflow the weights: the run stops at the first non-finite loss with one
    line naming it, exit code 1, its logs flushed, and no model saved although --save-model was given."""
    argv = CASES[script]["tiny"] + CASES[script]["diverge"] + ["--save-model"]
    proc = run_script(ROOT / script, argv, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and "not finite" in lines[-1] and "no model saved" in lines[-1], lines
    assert list((tmp_path / "runs").glob("*/events.out.tfevents.*")) and not list((tmp_path / "runs").glob("*/*.pt"))


@pytest.mark.parametrize("script", PRESENT)
def test_contract_ctrl_c_saves_the_model_and_says_where(script, tmp_path):
    argv = CASES[script]["tiny"] + ["--total-timesteps", "10000000", "--save-model", "--no-progress"]
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *ONE_THREAD, *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not list((tmp_path / "runs").glob("*/events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # well inside the training loop
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    (model,) = (tmp_path / "runs").glob("*/*.pt")
    assert f"interrupted at step" in err and str(model.relative_to(tmp_path)) in err, err
    ckpt = torch.load(model)
    assert ckpt["interrupted"] and ckpt["step"] > 0 and ckpt["script"] == script


@pytest.mark.parametrize("script", PRESENT)
def test_contract_runs_started_together_get_their_own_folders(script, tmp_path):
    module = load(script)
    base = str(tmp_path / "CartPole-v1__x__1__1700000000")
    assert [module.new_folder(base) for _ in range(3)] == [base, base + "-2", base + "-3"]


class EndlessEnv(gym.Env):
    """No termination and no time limit: only a bounded evaluation ends on it."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 1.0, False, False, {}


gym.register("ContractEndless-v0", entry_point=EndlessEnv)


def test_contract_evaluation_always_ends():
    ppo = load("ppo.py")
    assert ppo.evaluate(lambda obs: np.zeros((len(obs), 1)), "ContractEndless-v0", 2, seed=0) == 10_000
    with pytest.raises(ppo.Diverged):
        ppo.evaluate(lambda obs: np.full((len(obs), 1), np.nan), "Pendulum-v1", 2, seed=0)


def test_contract_run_output_ends_its_lines_and_says_where(tmp_path, monkeypatch, capsys):
    """The progress line is ended before the evaluation line; the rounding of --total-timesteps to whole rollouts
    is said; the last line names the run folder and the model."""
    ppo = load("ppo.py")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = CASES["ppo.py"]["tiny"] + ["--total-timesteps", "300", "--save-model", "--log-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["ppo.py", *argv])
    ppo.main()
    out, err = capsys.readouterr()
    assert "note: training 256 of the 300 steps" in err and err.endswith("\n") and "ETA" in err
    (run_dir,) = tmp_path.iterdir()
    assert out.splitlines()[0].startswith("eval/episodic_return") and str(run_dir) in out.splitlines()[-1]
    assert str(run_dir / "ppo.pt") in out.splitlines()[-1]


def test_contract_capture_video_records_every_evaluation_episode(tmp_path):
    """Off-screen MuJoCo rendering without a display; one video per evaluation episode, no stubs; a second
    evaluation of the saved model records into a new folder instead of overwriting."""
    argv = ["--env-id", "InvertedPendulum-v5", "--total-timesteps", "64", "--num-steps", "64", "--num-minibatches",
            "1", "--eval-episodes", "2", "--capture-video", "--save-model"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    proc = subprocess.run([sys.executable, str(ROOT / "ppo.py"), *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (model,) = (tmp_path / "runs").glob("*/ppo.pt")
    assert sorted(p.parent.name for p in model.parent.glob("videos/*/*.mp4")) == ["env-0", "env-1"]
    evaluate = [sys.executable, str(ROOT / "ppo.py"), "--eval-model", str(model), "--eval-episodes", "2",
                "--capture-video"]  # fmt: skip
    proc = subprocess.run(evaluate, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(model.parent.glob("videos-2/*/*.mp4"))) == 2 and len(list(model.parent.glob("*/*/*.mp4"))) == 4


def test_contract_readme_concept_table_names_exist():
    """Every function, class or method that the README's concept → code table names is defined in a script of
    its row (`Class.method` for a method; flags and test names are not code names)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Concept → code", 1)[1].split("\n## ", 1)[0]
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table.splitlines() if line.startswith("| ")]
    checked = 0
    for concept, scripts, names in rows[1:]:
        defined = set()
        for script in re.findall(r"`(\w+\.py)`", scripts):
            for node in ast.parse((ROOT / script).read_text()).body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    defined.add(node.name)
                    defined.update(f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef))
                elif isinstance(node, ast.Assign):
                    defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        for name in re.findall(r"`([\w.]+)`", names):
            if not name.startswith("test_"):
                assert name in defined, f"README concept table: {concept.strip()} names {name}, not in {scripts}"
                checked += 1
    assert checked > 30
