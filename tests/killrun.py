"""Run a stage script and SIGKILL it at a chosen point: just before the (n+1)-th call of a library function
(``module:function`` or ``module:Class.method``), i.e. after n calls finished. Deterministic, unlike a timer,
and the process really dies by SIGKILL: no handler, no cleanup, files half-written stay so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_KILLER = """
import importlib, os, runpy, signal, sys
target, calls, script = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module, _, attr = target.partition(":")
owner = importlib.import_module(module)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
original, count = getattr(owner, name), [0]
def wrapper(*args, **kwargs):
    count[0] += 1
    if count[0] > calls:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, name, wrapper)
sys.argv = [script, *sys.argv[4:]]
runpy.run_path(script, run_name="__main__")
"""


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}


def run_stage(script: str, *args, prefix: tuple[str, ...] = (), extra_env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """``stages/<script>`` to the end (behind ``prefix``, e.g. a command that switches user, with ``extra_env``);
    its output (fails the test on a non-zero exit)."""
    done = subprocess.run([*prefix, sys.executable, str(ROOT / "stages" / script), *map(str, args)],
                          capture_output=True, text=True, env={**env(), **(extra_env or {})}, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_killed(script: str, target: str, after: int, *args) -> None:
    """``stages/<script>`` SIGKILLed just before ``target``'s call number ``after + 1``; fails the test if it
    ended any other way (e.g. finished with fewer calls)."""
    done = subprocess.run([sys.executable, "-c", _KILLER, target, str(after), str(ROOT / "stages" / script),
                           *map(str, args)], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=900)
    assert done.returncode == -signal.SIGKILL, f"not killed (exit {done.returncode}): {done.stderr[-3000:]}"
