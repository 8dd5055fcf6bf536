"""The promises every script keeps: --help, one-line errors with exit code 2,
determinism, running alone, and identical copies of the blocks that are shared."""

import ast
import functools
import math
import os
import pickle
import re
import shutil
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import (
    CASES,
    PRESENT,
    ROOT,
    load,
    read_scalars,
    run_script,
    train_cli,
)

# The run plumbing below every script's cut line: the same blocks, copied identically.
PLUMBING = ["check", "check_finite", "env_spaces", "prepare", "new_folder", "Run"]
PLUMBING += ["evaluate", "evaluate_saved", "parse_args", "main"]
# Helpers above the cut line that several scripts share, identical wherever they appear:
# copying one file must give everything it needs, and a reader sees one version of each.
ALGORITHM_SHARED = ["layer_init", "RunningMeanStd", "RewardScale", "explained_variance"]
ALGORITHM_SHARED += ["make_envs", "compute_gae", "final_observations", "ReplayBuffer"]
ALGORITHM_SHARED += ["polyak_update", "scale_action", "k3_kl"]
# grpo_bandit.py has no gym env: these blocks are its own (its banner says so); dqn.py's
# ReplayBuffer also stores each transition's γ^m, for its n-step targets.
GRPO_OWN = {"prepare", "evaluate", "evaluate_saved", "parse_args"}
OWN = {("grpo_bandit.py", block) for block in GRPO_OWN} | {("dqn.py", "ReplayBuffer")}
# The common Args fields every script has (grpo_bandit.py: no --capture-video); all but
# threads, env_id, total_timesteps and num_envs (whose defaults depend on the algorithm)
# are the same lines, help text included, everywhere.
COMMON_FIELDS = ["exp_name", "seed", "torch_deterministic", "device", "threads"]
COMMON_FIELDS += ["env_id", "log_dir", "log_every", "save_model", "eval_model"]
COMMON_FIELDS += ["eval_episodes", "capture_video", "progress", "total_timesteps"]
OWN_DEFAULTS = ("threads", "env_id", "total_timesteps")
SAME_LINE_FIELDS = [field for field in COMMON_FIELDS if field not in OWN_DEFAULTS]


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
    flags = ["--env-id", "--seed", "--total-timesteps", "--save-model", "--eval-model"]
    for flag in flags + ["--device"]:
        assert flag in proc.stdout


@pytest.mark.parametrize("script", PRESENT)
def test_contract_bad_input_exits_2_with_one_line(script, tmp_path):
    logs = tmp_path / "runs"
    case = CASES[script]
    to_logs = ["--log-dir", str(logs)]
    proc = run_script(ROOT / script, ["--env-id", "NoSuchEnv-v0"] + to_logs, tmp_path)
    assert_one_line_error(proc, "NoSuchEnv-v0")
    proc = run_script(ROOT / script, case["inconsistent"] + to_logs, tmp_path)
    assert_one_line_error(proc)
    if case.get("wrong_space"):
        argv = ["--env-id", case["wrong_space"]] + to_logs
        proc = run_script(ROOT / script, argv, tmp_path)
        assert_one_line_error(proc, case["wrong_space"])
    assert not logs.exists(), "a refused run must write nothing"


@pytest.mark.parametrize("script", PRESENT)
def test_contract_same_seed_same_scalars(script, tmp_path):
    runs = []
    for folder in ("a", "b"):
        argv = ["--log-dir", str(tmp_path / folder), "--device", "cpu"]
        runs.append(train_cli(script, CASES[script]["tiny"] + argv))
    a = read_scalars(runs[0]["run_dir"])
    b = read_scalars(runs[1]["run_dir"])
    timing = {"charts/SPS"}
    assert set(a) == set(b) and len(set(a) - timing) > 3
    for tag in set(a) - timing:
        assert a[tag] == b[tag], tag
    assert math.isfinite(runs[0]["eval_return"])
    assert runs[0]["eval_return"] == runs[1]["eval_return"]


@pytest.mark.parametrize("script", PRESENT)
def test_contract_runs_alone_in_an_empty_folder(script, tmp_path):
    shutil.copy(ROOT / script, tmp_path / script)
    argv = CASES[script]["tiny"] + ["--save-model"]
    proc = run_script(tmp_path / script, argv, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval/episodic_return" in proc.stdout
    assert list((tmp_path / "runs").glob("*/events.out.tfevents.*"))
    assert list((tmp_path / "runs").glob("*/*.pt"))


def top_level_sources(script: str) -> dict[str, str]:
    """Name -> source of each top-level function and class, decorators included."""
    lines = (ROOT / script).read_text().splitlines()
    sources = {}
    for node in ast.parse("\n".join(lines)).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            sources[node.name] = "\n".join(lines[first - 1 : node.end_lineno])
    return sources


def args_fields(script: str) -> dict[str, str]:
    """Args field name -> its source: annotation, default and the help text below it."""
    src = (ROOT / script).read_text()
    tree = ast.parse(src)
    args = next(n for n in tree.body if getattr(n, "name", "") == "Args")
    fields = {}
    for node, after in zip(args.body, args.body[1:] + [None]):
        if isinstance(node, ast.AnnAssign):
            helptext = ast.get_source_segment(src, after) if after else ""
            fields[node.target.id] = ast.get_source_segment(src, node) + helptext
    return fields


def test_contract_shared_blocks_identical():
    sources = {script: top_level_sources(script) for script in PRESENT}
    for block in PLUMBING + ALGORITHM_SHARED:
        copies = set()
        for script, blocks in sources.items():
            if block in blocks and (script, block) not in OWN:
                copies.add(blocks[block])
        assert len(copies) <= 1, f"{block} differs between scripts"


@pytest.mark.parametrize("script", PRESENT)
def test_contract_cut_line_parts_algorithm_from_plumbing(script):
    """One banner; below it the plumbing blocks only, above it none of them."""
    src = (ROOT / script).read_text()
    lines = src.splitlines()
    banner = [i for i, line in enumerate(lines) if line.startswith("# ── Run plumb")]
    assert len(banner) == 1 and "identical in every script" in lines[banner[0]]
    below = set()
    for node in ast.parse(src).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if node.lineno > banner[0]:
                below.add(node.name)
    assert below <= set(PLUMBING), f"{below - set(PLUMBING)} below the cut"
    above = set(top_level_sources(script)) - below
    assert not above & set(PLUMBING), f"{above & set(PLUMBING)} above the cut"


def test_contract_common_args_fields_are_the_same_lines():
    fields = {script: args_fields(script) for script in PRESENT}
    for script, names in fields.items():
        common = set(COMMON_FIELDS)
        if script == "grpo_bandit.py":
            common.discard("capture_video")
        assert common <= set(names), f"{script}: Args lacks {common - set(names)}"
    for name in SAME_LINE_FIELDS:
        copies = {names[name] for names in fields.values() if name in names}
        assert len(copies) == 1, f"Args.{name} differs between scripts"


# ── Faults: every script stops loudly on bad input and divergence, and loses
# nothing on Ctrl-C


def run_main(module, argv, monkeypatch, capsys) -> tuple[int, str, str]:
    """module.main() in this process, as `python script argv` would run it:
    (exit code, stdout, stderr)."""
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
    cases = [
        ["--seed", "-1"],
        ["--seed", str(2**32)],
        ["--seed", "one"],
        ["--sed", "1"],
        ["--total-timesteps", "1e6"],
        ["--total-timesteps"],
        ["--threads", "-3"],
        ["--threads", "10000000000"],
        ["--learning-rat", "0.1"],
        ["--log-dir", ""],
        ["--log-every", "0"],
        ["--log-dir", str(a_file)],
        ["--exp-name", "my/exp", "--save-model"],
        ["--exp-name", "x" * 300, "--save-model"],
        [lr_flag, "inf"],
        [lr_flag, "nan"],
        [lr_flag, "0"],
        [lr_flag, "fast"],
        ["--hidden", "0"],
        ["--eval-episodes", "-1"],
    ]
    tiny = CASES[script]["tiny"]
    return [tiny + case for case in cases] + CASES[script].get("bad", [])


@pytest.mark.parametrize("script", PRESENT)
def test_contract_bad_input_refused_before_training(
    script, tmp_path, monkeypatch, capsys
):
    module = load(script)
    logs = tmp_path / "runs"
    tiny = CASES[script]["tiny"]
    for argv in bad_inputs(script, tmp_path):
        case = argv[len(tiny) :] if argv[: len(tiny)] == tiny else argv
        argv = ["--log-dir", str(logs)] + argv
        code, out, err = run_main(module, argv, monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (argv, code, err)
        assert lines[0].startswith("error: "), (argv, err)
        # the line names what to change: a flag of the case, or its value (an env id)
        named = [token for token in case if token.startswith("--") or len(token) > 3]
        assert any(token in lines[0] for token in named), (case, lines[0])
        assert not logs.exists(), argv


@pytest.mark.parametrize("script", PRESENT)
def test_contract_eval_model_refuses_files_it_cannot_use(
    script, tmp_path, monkeypatch, capsys
):
    module = load(script)
    other = "ppo.py" if script == "dqn.py" else "dqn.py"
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text").write_bytes(b"101\n")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "state_dict")
    torch.save(torch.zeros(3), tmp_path / "tensor")
    (tmp_path / "pickle").write_bytes(pickle.dumps({"script": script}))
    torch.save({"script": other, "args": {}, "model": {}}, tmp_path / "other")
    for name in ["empty", "text", "state_dict", "tensor", "pickle", "other", "missing"]:
        argv = ["--eval-model", str(tmp_path / name)]
        code, out, err = run_main(module, argv, monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (name, err)
        assert lines[0].startswith("error: "), (name, err)
        assert name != "other" or f"saved by {other}" in lines[0], lines
    argv = ["--eval-model", str(tmp_path / "other"), "--eval-episodes", "0"]
    code, out, err = run_main(module, argv, monkeypatch, capsys)
    expected = f"error: {script}: --eval-model needs --eval-episodes >= 1"
    assert code == 2 and err.strip() == expected, err


@pytest.mark.parametrize("script", PRESENT)
def test_contract_divergence_stops_with_one_line_and_no_model(script, tmp_path):
    """A learning rate large enough to overflow the weights: the run stops at the first
    non-finite loss with one line naming it, exit code 1, its logs flushed, and no
    model saved although --save-model was given."""
    argv = CASES[script]["tiny"] + CASES[script]["diverge"] + ["--save-model"]
    proc = run_script(ROOT / script, argv, tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last.startswith("error: ") and "not finite" in last, last
    assert "no model saved" in last, last
    assert list((tmp_path / "runs").glob("*/events.out.tfevents.*"))
    assert not list((tmp_path / "runs").glob("*/*.pt"))


@pytest.mark.parametrize("script", PRESENT)
def test_contract_runs_started_together_get_their_own_folders(script, tmp_path):
    module = load(script)
    base = str(tmp_path / "CartPole-v1__x__1__1700000000")
    folders = [module.new_folder(base) for _ in range(3)]
    assert folders == [base, base + "-2", base + "-3"]


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
    endless = ppo.Args(env_id="ContractEndless-v0", eval_episodes=2)
    assert ppo.evaluate(lambda obs: np.zeros((len(obs), 1)), endless, None) == 10_000
    pendulum = ppo.Args(env_id="Pendulum-v1", eval_episodes=2)
    with pytest.raises(FloatingPointError):
        ppo.evaluate(lambda obs: np.full((len(obs), 1), np.nan), pendulum, None)


# Where the env's numpy data meets the device (script: its functions and Class.methods):
# each tensor made there must be made on the device it meets (device=...), or a GPU run
# mixes devices. A CPU run cannot tell, so the test runs these with torch's default
# device set to "meta": a tensor made without device= is a meta tensor, which holds no
# data, and the step fails. (tests/test_device.py runs them on a real GPU.)
ENV_MEETS_DEVICE = {
    "ppo.py": ["collect_rollout", "estimate", "Agent.act"],
    "trpo.py": ["collect_rollout", "estimate", "Agent.act"],
    "a2c.py": ["collect_rollout", "estimate", "Agent.act"],
    "reinforce.py": ["run_episodes", "estimate", "Agent.act"],
    "dqn.py": ["ReplayBuffer.sample", "QNetwork.act"],
    "ddpg.py": ["ReplayBuffer.sample", "explore", "Actor.act"],
    "sac_continuous.py": ["ReplayBuffer.sample", "update_critics", "Actor.act"],
    "grpo_bandit.py": ["collect", "policy_stats", "Policy.act"],
    # this process only evaluates; the workers are spawned processes, which import the
    # file afresh: test_a3c.py runs their code here under the same check
    "a3c.py": ["Agent.act"],
}


def on_meta_default_device(owner, name: str):
    """Replace owner.name (a module's function or a class's method) by a copy that runs
    with torch's default device set to "meta"."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch.device("meta"):
            return fn(*args, **kwargs)

    setattr(owner, name, wrapped)


# the tiny runs, and a Box env's with --normalize, whose running statistics and reward
# scale ppo.py and trpo.py keep on the device (a2c.py: its reward scale on the CPU)
DEVICE_CASES = [
    pytest.param(script, CASES[script]["tiny"], id=script) for script in PRESENT
]
NORMALIZE = ["--env-id", "Pendulum-v1", "--normalize", "--total-timesteps", "256"]
NORMALIZE += ["--num-envs", "1", "--num-steps", "64", "--eval-episodes", "1"]
for script in ["ppo.py", "trpo.py"]:
    if script in PRESENT:
        DEVICE_CASES.append(pytest.param(script, NORMALIZE, id=f"{script}-normalize"))


@pytest.mark.parametrize("script, argv", DEVICE_CASES)
def test_contract_tensors_made_from_env_data_follow_the_device(script, argv, tmp_path):
    module = load(script)
    for path in ENV_MEETS_DEVICE[script]:
        *cls, name = path.split(".")
        owner = module
        if cls:
            owner = getattr(module, cls[0])
        on_meta_default_device(owner, name)
    argv = argv + ["--log-dir", str(tmp_path), "--device", "cpu"]
    result = train_cli(module, argv)
    assert math.isfinite(result["eval_return"])


class Float64Finder(TorchFunctionMode):
    """Records the torch functions and methods that return a float64 tensor."""

    def __init__(self):
        super().__init__()
        self.found = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            self.found.add(getattr(func, "__name__", str(func)))
        return out


# the tiny runs, and sac's fixed temperature (its log α is made apart from --autotune's)
FLOAT64_CASES = [pytest.param(script, [], id=script) for script in PRESENT]
if "sac_continuous.py" in PRESENT:
    case = pytest.param("sac_continuous.py", ["--no-autotune"], id="sac-no-autotune")
    FLOAT64_CASES.append(case)


@pytest.mark.parametrize("script, extra", FLOAT64_CASES)
def test_contract_tiny_runs_make_no_float64_tensor(script, extra, tmp_path):
    """Apple's MPS has no float64: a float64 tensor on it (torch.as_tensor of the env's
    float64 rewards, torch.tensor of a numpy float64) stops the run with a TypeError.
    A CPU run shows where one is made. (--normalize's running statistics are float64
    by choice, and not covered here.)"""
    module = load(script)
    argv = CASES[script]["tiny"] + extra + ["--log-dir", str(tmp_path)]
    with Float64Finder() as finder:
        result = train_cli(module, argv + ["--device", "cpu"])
    assert not finder.found, f"float64 tensors from {sorted(finder.found)}"
    assert math.isfinite(result["eval_return"])


def test_contract_run_output_ends_its_lines_and_says_where(
    tmp_path, monkeypatch, capsys
):
    """The progress line is cleared before the evaluation line; --total-timesteps
    rounds up to whole rollouts without a note (300 steps: 3 rollouts of 2 × 64); the
    last line names folder and model."""
    ppo = load("ppo.py")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["--total-timesteps", "300", "--save-model", "--log-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["ppo.py", *CASES["ppo.py"]["tiny"], *argv])
    ppo.main()
    out, err = capsys.readouterr()
    assert "ETA" in err and err.endswith("\r\033[K") and "note" not in err
    (run_dir,) = tmp_path.iterdir()
    first = out.splitlines()[0]
    last = out.splitlines()[-1]
    assert first.startswith("eval/episodic_return") and last.startswith("384 steps")
    assert str(run_dir) in last and str(run_dir / "ppo.pt") in last


def test_contract_capture_video_records_every_evaluation_episode(tmp_path):
    """Off-screen MuJoCo rendering without a display; one video per evaluation episode,
    no stubs; a second evaluation of the saved model records into a new folder."""
    argv = ["--env-id", "InvertedPendulum-v5", "--total-timesteps", "64"]
    argv += ["--num-steps", "64", "--num-minibatches", "1", "--eval-episodes", "2"]
    argv += ["--capture-video", "--save-model"]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    proc = subprocess.run([sys.executable, str(ROOT / "ppo.py"), *argv], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (model,) = (tmp_path / "runs").glob("*/ppo.pt")
    videos = sorted(p.parent.name for p in model.parent.glob("videos/*/*.mp4"))
    assert videos == ["env-0", "env-1"]
    evaluate = [sys.executable, str(ROOT / "ppo.py"), "--eval-model", str(model)]
    evaluate += ["--eval-episodes", "2", "--capture-video"]
    proc = subprocess.run(evaluate, **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(model.parent.glob("videos-2/*/*.mp4"))) == 2
    assert len(list(model.parent.glob("*/*/*.mp4"))) == 4


def defined_names(script: str) -> set[str]:
    """Top-level functions, classes, `Class.method`s and assigned names of a script."""
    defined = set()
    for node in ast.parse((ROOT / script).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
            for method in node.body:
                if isinstance(method, ast.FunctionDef):
                    defined.add(f"{node.name}.{method.name}")
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return defined


def test_contract_readme_concept_table_names_exist():
    """Every function, class or method that the README's concept → code table names is
    defined in a script of its row (flags and test names are not code names)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Concept → code", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    checked = 0
    for row in rows[1:]:
        concept, scripts, names = re.split(r"(?<!\\)\|", row)[1:-1]
        defined = set()
        for script in re.findall(r"`(\w+\.py)`", scripts):
            defined |= defined_names(script)
        for name in re.findall(r"`([\w.]+)`", names):
            if not name.startswith("test_"):
                assert name in defined, f"{concept.strip()}: {name} not in {scripts}"
                checked += 1
    assert checked > 30
