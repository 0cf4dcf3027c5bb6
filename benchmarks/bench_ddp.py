"""Stage 02 under ``torchrun`` on every visible GPU (DistributedDataParallel, NCCL; gloo processes on a CPU box):
throughput against one process of the same recipe, then kill and resume.

Three runs of ``stages/02_train.py`` with the same recipe: one process (the limit: N processes can at best
train N times as fast), N processes to the end, and N processes SIGKILLed as a group once their first
checkpoint exists, then restarted. Reported: img/s of both (main epochs of ``log.csv``), the scaling
``N-process img/s / (N x 1-process img/s)``, and whether the resumed run ended with exactly the tensors of the
uninterrupted one (``model.pt``, every tensor of ``last.pt``'s module, the log).

    python benchmarks/bench_ddp.py [--data runs/syn8 --recipe training/synthetic-tiny.yaml --procs 2]

``--record`` appends the result to ``benchmarks/results/ddp.jsonl`` and renders ``ddp.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from landmark_kit import ledger
from landmark_kit.synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = {
    "backend": "backend", "recipe": lambda r: f"`{r['recipe']}`", "processes": "procs",
    "1-process img/s": "one_process_img_per_s", "N-process img/s": "ddp_img_per_s", "scaling": "scaling",
    "kill + resume exact": lambda r: "yes" if r["resume_exact"] else f"no ({r['resume_detail']})",
}
TABLE = ledger.Table("ddp", COLUMNS,
                     "Stage 02 under torchrun against N x one process of the same recipe in the same run (scaling 1.0 "
                     "= linear); a run SIGKILLed after its first checkpoint and restarted must end with the same tensors.")


def _command(procs: int, data: Path, workdir: Path, args: argparse.Namespace) -> list[str]:
    flags = ["--data-root", str(data), "--workdir", str(workdir), "--recipe", args.recipe, "--epochs", str(args.epochs),
             "--final-epochs", str(args.final_epochs), "--val-queries", "0"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
    return [*(launcher if procs > 1 else [sys.executable]), str(ROOT / "stages" / "02_train.py"), *flags]


def _environment() -> dict[str, str]:
    """One thread a process: on a CPU box the one-process limit and each of the N processes get one core."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _train(cmd: list[str], env: dict[str, str], timeout: float) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")


def _img_per_s(workdir: Path) -> float:
    rows = list(csv.DictReader(io.StringIO((workdir / "log.csv").read_text())))
    return float(np.mean([float(r["img_s"]) for r in rows if r["stage"] == "main"]))


def _kill_at_first_checkpoint(cmd: list[str], workdir: Path, env: dict[str, str], timeout: float) -> None:
    """Start ``cmd`` as its own process group; SIGKILL the group once ``workdir/last.pt`` exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not (workdir / "last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError("the run wrote no checkpoint before it ended (lower --checkpoint-every in the recipe)")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if (workdir / "model.pt").exists():
        raise RuntimeError("the run had finished when it was killed: nothing to resume (more --epochs)")


def differences(expected: Path, resumed: Path) -> list[str]:
    """What differs between two finished runs: tensors of ``model.pt`` and of ``last.pt``'s module, the log."""
    found = []
    for name, key in (("model.pt", "model"), ("last.pt", "module")):
        a = torch.load(expected / name, weights_only=True)[key]
        b = torch.load(resumed / name, weights_only=True)[key]
        found += [f"{name}:{k}" for k in a if k not in b or not torch.equal(a[k], b[k])]
    if _log(expected) != _log(resumed):
        found.append("log.csv")
    return found


def _log(workdir: Path) -> list[tuple[str, ...]]:
    """Each epoch's loss, accuracy and validation figures (img/s is a timing, it may differ)."""
    rows = csv.DictReader(io.StringIO((workdir / "log.csv").read_text()))
    return [(r["epoch"], r["stage"], r["loss"], r["accuracy"], r["val_gap"], r["val_map100"]) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/syn8", help="competition folder (an 8-landmark set is generated if missing)")
    ap.add_argument("--recipe", default="training/synthetic-tiny.yaml")
    ap.add_argument("--procs", type=int, default=torch.cuda.device_count() or 2,
                    help="processes (default: every visible GPU, else 2 gloo processes)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--final-epochs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900, help="seconds a training run may take")
    ap.add_argument("--no-scaling", action="store_true", help="skip the one-process run (no scaling figure)")
    args = ledger.parse_args(ap, TABLE)
    data = Path(args.data)
    if not (data / "train.csv").is_file():
        generate(data, SyntheticConfig(landmarks=8), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        one, full, killed = (Path(tmp) / name for name in ("one", "full", "killed"))
        env = _environment()
        if not args.no_scaling:
            _train(_command(1, data, one, args), env, args.timeout)
        _train(_command(args.procs, data, full, args), env, args.timeout)
        _kill_at_first_checkpoint(_command(args.procs, data, killed, args), killed, env, args.timeout)
        _train(_command(args.procs, data, killed, args), env, args.timeout)
        found = differences(full, killed)
        single, ddp = (None if args.no_scaling else _img_per_s(one)), _img_per_s(full)
    result = {"recipe": args.recipe, "procs": args.procs, "epochs": args.epochs, "final_epochs": args.final_epochs,
              "backend": "nccl" if torch.cuda.is_available() else "gloo",
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "one_process_img_per_s": single and round(single, 1), "ddp_img_per_s": round(ddp, 1),
              "scaling": single and round(ddp / (args.procs * single), 3), "resume_exact": not found,
              "resume_detail": ", ".join(found[:5])}
    ledger.publish(TABLE, [result], args.record)
    if found:
        raise SystemExit(f"the resumed run differs from the uninterrupted one: {result['resume_detail']}")


if __name__ == "__main__":
    main()
