"""--device cuda and --device mps, end to end, for every script: a short training run
with --save-model whose networks and rollout or replay tensors live on the device (no
silent fallback to the CPU) and whose evaluation return is finite, then --eval-model of
the saved file on the CPU and on the device, each ending with a finite return. Each test
skips, saying why, where torch sees no such device. `pytest -m device` runs them alone.

The training runs in a fresh process: one where an earlier test hid the GPUs (conftest's
CUDA_VISIBLE_DEVICES="") keeps seeing none once CUDA has been asked about."""

import functools
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from conftest import CASES, PRESENT, ROOT, load, run_script, train_cli

pytestmark = pytest.mark.device

# What holds each script's rollout or replay data on its way to the update: a class (the
# tensors of an instance, once made) or a function or Class.method (the tensors it
# returns).
STORAGE = {
    "ppo.py": ["Rollout", "estimate"],
    "trpo.py": ["Rollout", "estimate"],
    # a2c.py keeps its n-step rollout in numpy, the env's type: estimate makes the
    # rollout's tensors, on the device
    "a2c.py": ["estimate"],
    "reinforce.py": ["run_episodes"],
    "dqn.py": ["ReplayBuffer.sample"],
    "ddpg.py": ["ReplayBuffer.sample"],
    "sac_continuous.py": ["ReplayBuffer.sample"],
    "grpo_bandit.py": ["collect"],
}
# how torch answers "is there one?", and the device's name in a skip reason
AVAILABLE = {
    "cuda": "torch.cuda.is_available()",
    "mps": "torch.backends.mps.is_available()",
}
NAMES = {"cuda": "CUDA", "mps": "MPS"}


@pytest.fixture(autouse=True)
def _cpu_only():
    """Overrides conftest's fixture of this name, which hides every GPU: these tests
    must see one."""


@functools.cache
def torch_sees(device: str) -> bool:
    """Whether torch sees the device, asked in a fresh process as the runs are."""
    code = f"import torch; print({AVAILABLE[device]})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() == "True"


def tensor_devices(x, found: set):
    """Add the device type of every tensor in x (a tensor, a tuple, list or dict of
    them, or an object's attributes) to found."""
    if isinstance(x, torch.Tensor):
        found.add(x.device.type)
    elif isinstance(x, (tuple, list)):
        for item in x:
            tensor_devices(item, found)
    elif isinstance(x, dict):
        for item in x.values():
            tensor_devices(item, found)
    elif hasattr(x, "__dict__"):
        for item in vars(x).values():
            tensor_devices(item, found)


def record_instances(cls, found: set):
    """cls's instances add their tensors' devices to found, once made."""
    init = cls.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        tensor_devices(self, found)

    cls.__init__ = recording_init


def record_returns(owner, name: str, found: set):
    """owner.name (a module's function or a class's method) adds the devices of the
    tensors it returns to found."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def recording(*args, **kwargs):
        out = fn(*args, **kwargs)
        tensor_devices(out, found)
        return out

    setattr(owner, name, recording)


def train_and_record(script: str, argv: list[str], out: str):
    """train(args) of argv, run in this process, which records the devices of the
    model's parameters and buffers (when training ends) and of the STORAGE tensors;
    writes them with train's result as JSON to out."""
    module = load(script)
    model_devices = set()
    storage_devices = set()
    finish = module.Run.finish

    def recording_finish(self):
        tensor_devices(list(self.model.parameters()), model_devices)
        tensor_devices(list(self.model.buffers()), model_devices)
        return finish(self)

    module.Run.finish = recording_finish
    for path in STORAGE[script]:
        *cls, name = path.split(".")
        owner = module
        if cls:
            owner = getattr(module, cls[0])
        target = getattr(owner, name)
        if isinstance(target, type):
            record_instances(target, storage_devices)
        else:
            record_returns(owner, name, storage_devices)
    result = train_cli(module, argv)
    result["model_devices"] = sorted(model_devices)
    result["storage_devices"] = sorted(storage_devices)
    with open(out, "w") as f:
        json.dump(result, f)


def eval_return(stdout: str) -> float:
    """The return that the line "eval/episodic_return R over ..." reports."""
    match = re.search(r"^eval/episodic_return (\S+)", stdout, re.MULTILINE)
    assert match, stdout[-2000:]
    return float(match[1])


@pytest.mark.parametrize("device", ["cuda", "mps"])
@pytest.mark.parametrize("script", PRESENT)
def test_device_trains_saves_and_evaluates_on_the_device(script, device, tmp_path):
    if not torch_sees(device):
        pytest.skip(f"torch sees no {NAMES[device]} device here")
    if script not in STORAGE:
        pytest.skip(f"{script} trains in worker processes this recording cannot reach")
    argv = CASES[script]["tiny"] + ["--device", device, "--save-model"]
    argv += ["--log-dir", str(tmp_path / "runs")]
    out = tmp_path / "result.json"
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
    code += f"import test_device; test_device.train_and_record({script!r}, "
    code += f"{argv!r}, {str(out)!r})"
    run = dict(cwd=tmp_path, capture_output=True, text=True, timeout=600)
    proc = subprocess.run([sys.executable, "-c", code], **run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert math.isfinite(result["eval_return"])
    # no silent fallback: the networks and the data they learn from are on the device
    assert result["model_devices"] == [device]
    assert result["storage_devices"] == [device]
    # the saved file, evaluated on the CPU and on the device it was trained on
    for eval_device in ("cpu", device):
        argv = ["--eval-model", result["model_path"], "--device", eval_device]
        proc = run_script(ROOT / script, argv + ["--eval-episodes", "2"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert math.isfinite(eval_return(proc.stdout)), eval_device
