"""The layout is the formatter's: ruff format and ruff check (88 columns) hold for the
whole repository, and every script keeps its run plumbing under 250 lines."""

import re
import subprocess
import sys

import pytest

from conftest import PRESENT, ROOT

# ruff comes with requirements.txt: a missing ruff fails here rather than skipping
RUFF = [sys.executable, "-m", "ruff"]


@pytest.mark.parametrize("command", [["format", "--check"], ["check"]])
def test_style_ruff_is_clean(command):
    proc = subprocess.run(
        RUFF + command + ["."], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_style_no_formatter_escapes_and_no_wide_lines():
    for path in ROOT.glob("**/*.py"):
        if {".venv", "site", "runs"} & set(path.relative_to(ROOT).parts):
            continue
        text = path.read_text()
        assert not re.search(r"#\s*fmt:\s*(skip|off)", text), path
        wide = [n for n, line in enumerate(text.splitlines(), 1) if len(line) > 88]
        assert not wide, (
            f"{path.relative_to(ROOT)}: lines {wide} are over 88 characters"
        )


@pytest.mark.parametrize("script", PRESENT)
def test_style_plumbing_at_most_250_lines(script):
    lines = (ROOT / script).read_text().splitlines()
    (cut,) = [i for i, line in enumerate(lines) if line.startswith("# ── Run plumbing")]
    banner = 1
    while lines[cut + banner].startswith("#"):
        banner += 1
    assert banner <= 5, f"{script}: a banner of {banner} lines"
    below = len(lines) - cut - banner
    assert below <= 250, f"{script}: {below} lines below the banner"
