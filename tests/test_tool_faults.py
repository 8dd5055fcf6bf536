"""The helper tools keep the scripts' fault promises: bad input to docs/build.py or
benchmarks/*.py ends in one line `error: ...` on stderr, exit code 2, no traceback and
nothing written; Ctrl-C stops benchmarks/run.py and the runs it started, exit code 130.

Each case runs the tool as a user would, in a folder that holds only a file, a folder
of runs that report.py cannot use and a notes file that is not UTF-8."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

BUILD = ROOT / "docs/build.py"
RUN = ROOT / "benchmarks/run.py"
REPORT = ROOT / "benchmarks/report.py"
THROUGHPUT = ROOT / "benchmarks/throughput.py"
SB3_RUN = ROOT / "benchmarks/sb3_run.py"
PROFILE = ROOT / "benchmarks/profile_run.py"
# (arguments, a part of the one line); a case that loads an algorithm script (torch,
# an env) takes seconds, the others a fraction of one
BUILD_CASES = [
    (["--out", "a_file"], "is a file"),
    (["--out", "a_file/site"], "Not a directory"),
    (["--out", "/proc/nope/site"], "cannot write"),
    (["--out", ""], "name a folder"),
    (["--out"], "expected one argument"),
    (["--outt", "site"], "unrecognized arguments"),
    (["site"], "unrecognized arguments"),
]
RUN_CASES = [
    (["--workers", "0"], "--workers 0"),
    (["--workers", "-2"], "--workers -2"),
    (["--workers", "fast"], "--workers"),
    (["--timeout", "-5"], "--timeout"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (['--flags=--seed "3'], "No closing quotation"),
    (["--flags", "--total-timesteps 256"], "--flags='--total-timesteps 256'"),
    (["--flags"], "--flags='"),
    (["--out", "a_file"], "is a file"),
    (["--out", "a_file/runs"], "is not a folder"),
    (["--out", "/proc/nope/runs"], "cannot create"),
    (["--out", ""], "--out"),
    (["--roundz", "3"], "Unrecognized options"),
    (["--suite", "nope"], "invalid choice"),
    (["--backend", "slurm"], "invalid choice"),
    (["--scripts", "nope.py"], "no such script"),
    (["--scripts", "benchmarks"], "no such script"),
    (["--scripts", ""], "--scripts"),
    (["--scripts"], "at least one script"),
    (["--env-ids"], "at least one env id"),
    (["--env-ids", "../../x"], "not an env id"),
    (["--env-ids", "a__b"], "not an env id"),
    (["--seeds", "1", "1"], "named twice"),
    (["--seeds", "-1"], "--seeds -1"),
    (["--seeds", "4294967296"], "--seeds"),
    (["--gpus-per-run", "-1"], "--gpus-per-run"),
    (["--gpus-per-run", "1.5"], "whole"),
    (["--workers", "0", "--dry-run"], "--workers 0"),
]
REPORT_CASES = [
    (["--window", "-3"], "--window -3"),
    (["--window", "0"], "--window 0"),
    (["--window", str(10**30)], "--window"),
    (["--window", "fast"], "--window"),
    (["--windo", "3"], "Unrecognized options"),
    (["--log-dir", "nope"], "--log-dir"),
    (["--log-dir", "a_file"], "--log-dir"),
    (["--log-dir", ""], "--log-dir"),
    (["--log-dir", "."], "no finished TensorBoard runs"),
    (["--log-dir", "junk"], "no finished TensorBoard runs"),
    (["--log-dir", "junk", "--scripts", "ppo"], "no finished TensorBoard runs"),
    (["--log-dir", ".", "--out", "a_file"], "is a file"),
    (["--log-dir", ".", "--out", "/proc/nope/report"], "cannot create"),
    (["--log-dir", ".", "--out", ""], "--out"),
    (["--thresholds", "CartPole-v1", "nan"], "not finite"),
    (["--thresholds", "CartPole-v1"], "--thresholds"),
    (["--notes", "a", "--notes-file", "b.md"], "not both"),
    (["--notes-file", "missing.md", "--log-dir", "junk"], "cannot read"),
    (["--notes-file", "latin1.md", "--log-dir", "junk"], "not UTF-8"),
]
THROUGHPUT_CASES = [
    (["--rounds", "fast"], "Unrecognized options"),
    (["--roundz", "3"], "Unrecognized options"),
    (["--repeats", "0"], "--repeats 0"),
    (["--repeats", "-1"], "--repeats -1"),
    (["--repeats", "fast"], "--repeats"),
    (["--seed", "-1"], "--seed -1"),
    (["--seed", str(2**40)], "--seed"),
    (["--eval-episodes", "-1"], "--eval-episodes -1"),
    (["--env-steps", "0"], "--env-steps 0"),
    (["--env-id", ""], "--env-id"),
    (["--flags", "--total-timesteps 256"], "--flags='--total-timesteps 256'"),
    (['--flags=--seed "3'], "No closing quotation"),
    (["--out", "/proc/nope/x.md"], "cannot create"),
    (["--out", "."], "is a folder"),
    (["--out", "a_file/x.md"], "is not a folder"),
    (["--out", ""], "--out"),
    (["--scripts", "nope.py"], "no such script"),
    (["--scripts", "benchmarks/sb3_run.py"], "no algorithm script"),
    # settings only the script's train would refuse: once, its measuring process hung
    (["--scripts", "ppo.py", "--flags=--num-envs 0"], "--num-envs"),  # seconds
]
PROFILE_CASES = [
    (["--rate", "0"], "--rate 0"),
    (["--rate", "fast"], "--rate"),
    (["--ratez", "3"], "Unrecognized options"),
    (["--scripts", "nope.py"], "--scripts nope.py"),
    (["--scripts", "benchmarks/run.py"], "not an algorithm script"),
    (["--flags", "--seed 3"], "--flags='--seed 3'"),
    (['--flags=--seed "3'], "No closing quotation"),
    (["--out", "."], "is a folder"),
    (["--out", "a_file/x.md"], "is not a folder"),
    (["--out", "/proc/nope/x.md"], "cannot create"),
]
CARTPOLE = ["--script", "ppo.py", "--env-id", "CartPole-v1"]
SB3_RUN_CASES = [
    ([], "required"),
    (["--script", "nope.py", "--env-id", "CartPole-v1"], "invalid choice"),
    (["--script", "ppo.py"], "required"),
    ([*CARTPOLE, "--seed", "fast"], "invalid int"),
    ([*CARTPOLE, "--seed", "-1"], "--seed -1"),
    ([*CARTPOLE, "--eval-episodes", "-1"], "--eval-episodes -1"),
    ([*CARTPOLE, "--exp-name", "a/b"], "--exp-name"),
    ([*CARTPOLE, "--log-dir", "a_file"], "is a file"),
    ([*CARTPOLE, "--log-dir", "/proc/nope"], "cannot create"),
    ([*CARTPOLE, "--log-dir", ""], "--log-dir"),
    # the script's own refusal, in one line (once, a traceback from tyro)
    ([*CARTPOLE, "--roundz", "3"], "Unrecognized options"),  # seconds
    (["--script", "ddpg.py", "--env-id", "CartPole-v1"], "needs a Box"),  # seconds
]


@pytest.fixture
def cwd(tmp_path):
    """A folder with a file, runs report.py cannot use (a name that is no run's, a
    run.json that is no JSON, an events file without scalars) and a notes file that
    is not UTF-8."""
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "latin1.md").write_bytes("café".encode("latin-1"))
    junk = tmp_path / "junk"
    for run in ["a__b__c__d", "x/CartPole-v1__ppo__1__17", "CartPole-v1__ppo__2__17"]:
        (junk / run).mkdir(parents=True)
        (junk / run / "events.out.tfevents.1").write_bytes(b"")
    (junk / "x/run.json").write_text("{not json")
    return tmp_path


def refused(tool, argv: list[str], cwd, part: str):
    """tool run with argv in cwd: exit code 2, one line `error: ...` naming part, no
    traceback, nothing new in cwd."""
    before = sorted(cwd.rglob("*"))
    proc = subprocess.run(
        [sys.executable, str(tool), *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert part in lines[0], lines[0]
    assert sorted(cwd.rglob("*")) == before


@pytest.mark.parametrize("argv, part", BUILD_CASES)
def test_tool_faults_docs_build_refuses(cwd, argv, part):
    refused(BUILD, argv, cwd, part)


@pytest.mark.parametrize("argv, part", RUN_CASES)
def test_tool_faults_run_refuses(cwd, argv, part):
    refused(RUN, argv, cwd, part)


@pytest.mark.parametrize("argv, part", REPORT_CASES)
def test_tool_faults_report_refuses(cwd, argv, part):
    refused(REPORT, argv, cwd, part)


@pytest.mark.parametrize("argv, part", THROUGHPUT_CASES)
def test_tool_faults_throughput_refuses(cwd, argv, part):
    refused(THROUGHPUT, argv, cwd, part)


@pytest.mark.parametrize("argv, part", SB3_RUN_CASES)
def test_tool_faults_sb3_run_refuses(cwd, argv, part):
    refused(SB3_RUN, argv, cwd, part)


@pytest.mark.parametrize("argv, part", PROFILE_CASES)
def test_tool_faults_profile_refuses(cwd, argv, part):
    refused(PROFILE, argv, cwd, part)


def test_tool_faults_run_help_writes_flags_with_equals():
    env = dict(os.environ, COLUMNS="200")  # no wrapped help lines
    proc = subprocess.run(
        [sys.executable, str(RUN), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--flags='--total-timesteps 20000'" in proc.stdout


def scripts_running(folder) -> list[int]:
    """Pids of the ppo.py processes whose command line names folder or a path in it
    (a zombie's is empty)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:  # not a process, or one that just ended
            continue
        named = any(str(folder) in arg for arg in argv)
        if len(argv) > 1 and argv[1].endswith("ppo.py") and named:
            pids.append(int(entry))
    return pids


def test_tool_faults_run_ctrl_c_stops_its_runs(tmp_path):
    """Ctrl-C while a run trains: run.py stops it (no orphan) with one Ctrl-C, which the
    script reports in its log, starts no other run, says in one line what it kept,
    and exits with 130."""
    out = tmp_path / "runs"
    run_dir = out / "CartPole-v1__ppo__1"
    cmd = [sys.executable, str(RUN), "--scripts", "ppo.py", "--seeds", "1", "2"]
    cmd += ["--workers", "1", "--flags=--total-timesteps 10000000", "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 60
        # training has begun when the script's own run folder is there
        while not list(run_dir.glob("CartPole-v1__ppo__1__*")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        assert scripts_running(run_dir)
        time.sleep(1)  # past the few lines from the folder to its Ctrl-C handler
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
        for pid in scripts_running(tmp_path):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), stderr
    assert "kept 0/2 runs" in lines[0]
    assert scripts_running(tmp_path) == []
    assert "interrupted at step" in (run_dir / "stdout.log").read_text()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["returncode"] == 130  # the script's own exit; a rerun starts it again
    assert not (out / "CartPole-v1__ppo__2").exists()
