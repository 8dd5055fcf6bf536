"""The promises every script keeps: --help, one-line errors with exit code 2, determinism, running alone,
and identical copies of the blocks that the conventions say are shared."""

import ast
import math
import shutil

import pytest
from conftest import CASES, PRESENT, ROOT, read_scalars, run_script, train_cli

# Top-level functions and classes that are the same block wherever a script has them (CONVENTIONS.md, section 7).
SHARED_BLOCKS = ["fail", "env_spaces", "setup", "make_envs", "make_writer", "show_progress", "evaluate", "finish",
                 "layer_init", "RunningMeanStd", "compute_gae", "final_observations", "ReplayBuffer",
                 "polyak_update"]  # fmt: skip
# The common Args fields every script has; all but threads, env_id and total_timesteps (whose defaults depend on
# the algorithm) are the same line everywhere.
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
        copies = {script: src[block] for script, src in sources.items() if block in src}
        assert len(set(copies.values())) <= 1, f"{block} differs between {sorted(copies)}"
    fields = {script: args_fields(script) for script in PRESENT}
    for script, f in fields.items():
        assert set(COMMON_FIELDS) <= set(f), f"{script}: Args lacks {set(COMMON_FIELDS) - set(f)}"
    for name in SAME_LINE_FIELDS:
        assert len({f[name] for f in fields.values()}) == 1, f"Args.{name} differs between scripts"
