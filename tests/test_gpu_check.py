"""``benchmarks/gpu_check.py``: a failing or hanging part is reported and the rest run; ``--smoke`` runs every
part at toy sizes on this machine (CPU in CI), so the prepared GPU run cannot rot between GPU loans."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_results_are_read_from_indented_json_among_other_output(gpu_check):
    out = 'warming up {not json}\n{\n  "ratio": 0.91,\n  "nested": {"a": 1}\n}\ndone\n{"ratio": 0.5}\n'
    assert gpu_check.results(out) == [{"ratio": 0.91, "nested": {"a": 1}}, {"ratio": 0.5}]


def test_a_failing_and_a_hanging_part_are_reported_and_the_next_still_runs(gpu_check):
    python = [sys.executable, "-c"]
    fails = gpu_check.Part("fails", "g", [python + ['print(\'{"ratio": 0.4}\'); raise SystemExit(3)']])
    hangs = gpu_check.Part("hangs", "g", [python + ["import time; time.sleep(60)"]])
    works = gpu_check.Part("works", "g", [python + ['print(\'{"ratio": 0.9}\')'], python + ['print(\'{"x": 1}\')']],
                           figures=("ratio", "x"))
    outcomes = [gpu_check.run_part(part, 2) for part in (fails, hangs, works)]
    assert [o["status"] for o in outcomes] == ["failed (exit 3)", "timeout (2 s)", "ok"]
    assert outcomes[0]["results"] == [{"ratio": 0.4}] and outcomes[1]["seconds"] < 10
    table = gpu_check.summary([fails, hangs, works], outcomes)
    assert "| g | works | ok |" in table and "ratio 0.9; x 1" in table and "ratio 0.4" in table


@pytest.mark.slow
def test_smoke_runs_every_part_on_this_machine(tmp_path):
    """Every part runs and passes at toy sizes (~2 min on 2 idle cores; a roomier budget than the default 4.5
    min, so a busy CI machine fails only on a broken part)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--minutes", "9",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=700)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "| part |" not in line]
    assert len(rows) >= 11 and all("| ok |" in row for row in rows), done.stdout
    assert "resume_exact True" in done.stdout
    recorded = [path for path in (ROOT / "benchmarks" / "results").iterdir() if str(tmp_path) in path.read_text()]
    assert not recorded, f"--smoke recorded into {recorded}"
