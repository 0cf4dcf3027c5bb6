"""Every GPU figure the kit needs in one prepared run: extraction, training step, torchrun, search, verification,
scoring and the Kaggle estimator's rates, each part a benchmark of this folder in its own process with its
own time limit; a part that fails or runs out of time is reported and the rest go on.

    python benchmarks/gpu_check.py [--minutes 8] [--record] [--only extract search ...]
    python benchmarks/gpu_check.py --smoke        # the same parts at toy sizes on any device, records nothing

Without CUDA the full run takes CPU sizes (fewer images and steps, the 8-landmark set for the ResNet-101 recipe
and verification) and skips the nvjpeg part: every other part ran end to end on the 2-core dev machine with
``--minutes 22`` (20 min while other jobs shared it; the parts took 1,000 CPU s).

Parts (each figure is a ratio to a limit measured in the same run; see benchmarks/README.md):
extract (``bench_extract.py``: Lite0 224 with loader-worker and with on-device (nvjpeg) JPEG decode, Lite2 384
aspect, ResNet-101 512 px x 3 scales, against the bare float16 channels-last forward), train
(``bench_train.py``: the demo recipe and a ResNet-101 512 px recipe against the bare forward + backward), ddp
(``bench_ddp.py``: torchrun on every visible GPU, kill and resume), search (``bench_search.py``: exact ``knn``
and faiss flat against the bare product, on the device and on the CPU), verify (``bench_verify.py``, CPU
workers and GPU matching), scoring (``bench_scoring.py``), estimate (``kaggle estimate --save-rates`` for the
zero-shot and the six-member ensembles, then ``kaggle_estimates.py`` writes the estimator tables from those
rates). The summary table goes to stdout and to ``<workdir>/gpu-check.md``; with ``--record`` every benchmark
appends its figures to its ledger (the machine line names the GPU), the rates files and estimator tables are
written under ``benchmarks/results/`` and the summary is copied there as ``gpu-check-<device>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from landmark_kit.ledger import LEDGER, machine, markdown_table
from landmark_kit.synthetic import SyntheticConfig, generate

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@dataclass
class Part:
    """One measurement: ``commands`` run in order, in their own processes, within one time limit."""

    name: str
    group: str
    commands: list[list[str]]
    weight: float = 1.0  # share of the time budget
    figures: tuple[str, ...] = ("ratio",)  # result keys the summary shows
    env: dict[str, str] = field(default_factory=dict)
    skip: str = ""  # why this part does not run on this machine (the summary says so); empty: it runs


def _python(script: str, *args) -> list[str]:
    return [sys.executable, str(BENCH / script), *map(str, args)]


def plan(data: Path, data8: Path, out: Path, smoke: bool, cuda: bool, record: bool) -> list[Part]:
    """The parts at full size (GPU box), at CPU sizes (full mode without CUDA: every part within ~10 minutes on
    2 cores) or at toy sizes (``smoke``); ``out`` takes rates and estimator tables."""
    cpus = len(os.sched_getaffinity(0))
    workers = 1 if smoke else max(cpus - 1, 1)
    rec = ["--record"] if record else []
    cpu_full = not smoke and not cuda  # the GPU sizes would take an hour on a 2-core CPU: fewer images, steps
    # (images, batch): extraction; toy sizes run every code path in seconds on 2 CPU cores
    images, batch = (16, 8) if smoke else (4000, 64) if cuda else (64, 16)
    extract = ["--data", data, "--batch-size", batch, "--workers", workers, *rec]
    lite0, lite2, r101 = (64, 64, 64) if smoke else (224, 384, 512)
    big_name = "ResNet-18 (for ResNet-101)" if smoke else "ResNet-101"  # the rows say what actually ran
    ext_keys = ("bare_forward_img_per_s", "extract_img_per_s", "ratio")
    parts = [
        Part(f"Lite0 {lite0}, loader decode", "extract", [_python("bench_extract.py", *extract, "--images", images,
                                                                  "--size", lite0, "--decode", "cpu")], 1, ext_keys),
        Part(f"Lite0 {lite0}, device decode (nvjpeg)", "extract",
             [_python("bench_extract.py", *extract, "--images", images, "--size", lite0, "--decode", "device")], 1,
             ext_keys, skip="nvjpeg decodes on CUDA only (--smoke runs this code path on the CPU)" if cpu_full else ""),
        Part(f"Lite2 {lite2} aspect, {'loader' if cpu_full else 'device'} decode" + (", 32 images" if cpu_full else ""),
             "extract",
             [_python("bench_extract.py", *extract, "--images", 32 if cpu_full else images, "--model",
                      "tf_efficientnet_lite2", "--size", lite2, "--aspect",
                      "--decode", "cpu" if cpu_full else "device")], 1, ext_keys),
        Part(f"{big_name} {r101} x 3 scales" + (", 4 images" if cpu_full else ""), "extract",  # smoke: a ResNet-18
             [_python("bench_extract.py", *extract, "--images", 4 if cpu_full else images,  # stands in
                      "--model", "resnet18" if smoke else "resnet101", "--size", r101, "--scales", 0.75, 1, 1.25,
                      "--decode", "cpu" if cpu_full else "device")], 1.5, ext_keys),
    ]
    step_keys = ("bare_train_step_img_per_s", "train_img_per_s", "ratio")
    demo = ["--recipe", "training/synthetic-tiny.yaml", "--set", "sides=[64]", "batch_size=8"] if smoke else [
        "--recipe", "training/synthetic-lite0.yaml"]
    big = ["--recipe", "training/gldv2-smlyaka2019.yaml", "--set", "pretrained=false", f"workers={workers}"]
    big_side = 64 if smoke else 224 if cpu_full else r101
    if smoke:  # a ResNet-18 at 64 px stands in for the ResNet-101 at 512 px: the same recipe and code path
        big += ["model=resnet18", "sides=[64]", "batch_size=8"]
    elif cpu_full:  # its epoch over the 8-landmark set at 224 px, batches of 8: a minute on 2 cores
        big += ["sides=[224]", "batch_size=8"]
    parts += [
        Part("demo recipe", "train", [_python("bench_train.py", "--data", data, *demo,
                                              "--epochs", 2 if cuda and not smoke else 1,
                                              "--steps", 2 if smoke else 10 if cpu_full else 20, *rec)],
             1.5, step_keys),
        Part(f"{big_name} {big_side} px recipe" + (" (512 px on a GPU)" if cpu_full else ""), "train",
             [_python("bench_train.py", "--data", data8 if cpu_full else data, *big, "--epochs", 1,
                      "--steps", 2 if smoke or cpu_full else 10, *rec)], 2, step_keys),
        Part("torchrun, tiny recipe, kill + resume", "ddp",
             [_python("bench_ddp.py", "--data", data8, *rec,
                      *(["--epochs", 2, "--final-epochs", 0, "--no-scaling"] if smoke else []))],
             2, ("procs", "one_process_img_per_s", "ddp_img_per_s", "scaling", "resume_exact")),
    ]
    search = ["--queries", 512, "--database", 5000, "--dim", 64, "--repeat", 1] if smoke else (
        ["--queries", 16384, "--database", 400000, "--repeat", 3] if cuda else ["--repeat", 3])
    search_keys = ("matmul_gflops", "knn_gflops", "ratio", "faiss_flat_gflops", "faiss_ratio", "auto_backend")
    parts.append(Part("exact kNN and faiss flat", "search", [_python("bench_search.py", *search, *rec)], 1, search_keys))
    if cuda:
        parts.append(Part("exact kNN and faiss flat, CPU", "search", [_python("bench_search.py", "--repeat", 3, *rec)],
                          1, search_keys, {"CUDA_VISIBLE_DEVICES": ""}))
    verify = ["--workers", cpus, *rec, *(["--data", data, "--pairs", 20, "--bare-pairs", 10] if smoke else [
        "--recipe", "cleaning/synthetic.yaml", "--same-label",  # a CPU: local features of the 72 images of data8
        *(["--data", data, "--pairs", 4000, "--bare-pairs", 200] if cuda else
          ["--data", data8, "--pairs", 200, "--bare-pairs", 100])])]
    verify_keys = ("bare_ms_per_pair", "limit_pairs_per_s", "verify_pairs_per_s", "ratio")
    parts += [Part(f"verification, {device} matching", "verify",
                   [_python("bench_verify.py", *verify, "--device", device)], 1, verify_keys)
              for device in (["cpu", "cuda"] if cuda else ["cpu"])]
    scoring = ["--queries", 2000, "--index", 10000] if smoke else []
    parts.append(Part("120k queries x 100 ids" if not smoke else "toy submission", "scoring",
                      [_python("bench_scoring.py", *scoring, "--out", out / "scoring", *rec)], 0.5,
                      ("seconds", "pandas_read_seconds", "ratio_to_read")))
    tag = "smoke" if smoke else _slug(torch.cuda.get_device_name() if cuda else "cpu")
    for name, ensemble, dim in (("zero-shot", "ensembles/zero-shot.yaml", 0),
                                ("smlyaka2019-shape", "ensembles/smlyaka2019-shape.yaml", 3072)):
        if smoke and name != "zero-shot":
            continue
        ensemble = "ensembles/imagenet-lite0.yaml" if smoke else ensemble  # one small member at toy size
        rates = out / f"rates-{name}-{tag}.yaml"
        # a CPU measures the six 512 px members (0.07 img/s together on 2 cores) on one image per batch
        measure_batch = 4 if smoke else 64 if cuda else 4 if name == "zero-shot" else 1
        estimate = [sys.executable, "-m", "landmark_kit.kaggle", "estimate", "--ensemble", ensemble,
                    "--recipe", "submissions/full.yaml", "--test", 117577, "--sample-root", data,
                    "--measure-batch", measure_batch, "--save-rates", rates]
        tables = _python("kaggle_estimates.py", "--ensemble", ensemble, "--dim", dim, "--rates", rates,
                         "--out", out, "--name", f"kaggle-estimates-{name}-{tag}")
        parts.append(Part(f"{name} ensemble rates and tables", "estimate",
                          [list(map(str, estimate)), tables], 1.5, ()))
    for part in parts:
        part.commands = [list(map(str, command)) for command in part.commands]
    return parts


def _slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``: a file-name part naming the device."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def results(stdout: str) -> list[dict]:
    """The JSON objects a benchmark printed (``ledger.publish`` prints each result indented), in order."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while (start := stdout.find("{", position)) >= 0:
        try:
            value, position = decoder.raw_decode(stdout, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def run_part(part: Part, limit_s: float) -> dict:
    """Run ``part``'s commands within ``limit_s`` seconds: status ``ok``, ``failed (exit N)``, ``timeout`` or
    ``skipped: <why>`` (a part this machine cannot run: nothing started), seconds taken, the results printed and
    the tail of the output of a command that did not succeed. A command out of time is killed with its whole
    process group (loader workers, torchrun's processes)."""
    start, found, cpu = time.monotonic(), [], _children_cpu()
    if part.skip:
        return {"status": f"skipped: {part.skip}", "seconds": 0.0, "cpu_seconds": 0.0, "results": [], "tail": ""}
    env = {**os.environ, "PYTHONPATH": str(ROOT), **part.env}
    for command in part.commands:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=max(limit_s - (time.monotonic() - start), 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            return {"status": f"timeout ({limit_s:.0f} s)", "seconds": time.monotonic() - start,
                    "cpu_seconds": _children_cpu() - cpu, "results": found + results(stdout), "tail": stderr[-1500:]}
        found += results(stdout)
        if proc.returncode != 0:
            return {"status": f"failed (exit {proc.returncode})", "seconds": time.monotonic() - start,
                    "cpu_seconds": _children_cpu() - cpu, "results": found, "tail": (stderr or stdout)[-1500:]}
    return {"status": "ok", "seconds": time.monotonic() - start, "cpu_seconds": _children_cpu() - cpu, "results": found,
            "tail": ""}


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children, their own children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _figures(part: Part, outcome: dict) -> str:
    shown = [", ".join(f"{key} {r[key]}" for key in part.figures if key in r) for r in outcome["results"]]
    return "; ".join(s for s in shown if s)


def summary(parts: list[Part], outcomes: list[dict]) -> str:
    """The summary as markdown: one row a part with its status, seconds and headline figures."""
    rows = [{"part": p.group, "what": p.name, "status": o["status"], "seconds": f"{o['seconds']:.0f}",
             "CPU s": f"{o['cpu_seconds']:.0f}", "figures": _figures(p, o)} for p, o in zip(parts, outcomes)]
    return markdown_table(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float,
                    help="time budget of the parts together (default 8; smoke 4.5, data generation included)")
    ap.add_argument("--record", action="store_true", help="append every figure to the ledgers under benchmarks/results")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on whatever device exists; records nothing")
    ap.add_argument("--only", nargs="+", metavar="GROUP", help="run only these groups (extract train ddp search ...)")
    ap.add_argument("--workdir", help="synthetic data and outputs (default runs/gpu-check; smoke: a temporary folder)")
    args = ap.parse_args(argv)
    if args.smoke and args.record:
        ap.error("--smoke records nothing; drop --record")
    budget = 60 * (args.minutes or (4.5 if args.smoke else 8))
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or (tmp if args.smoke else ROOT / "runs" / "gpu-check"))
        out = LEDGER if args.record else work / "results"
        out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        sides = dict(min_side=160, max_side=224) if args.smoke else {}
        data = work / "synthetic"  # smoke: 8 landmarks, the tiny recipe's set too
        data8 = data if args.smoke else work / "synthetic8"
        for folder, landmarks in ((data, 8 if args.smoke else 40), (data8, 8)):
            if not (folder / "train.csv").is_file():
                generate(folder, SyntheticConfig(landmarks=landmarks, **sides), progress=False)
        clock = started if args.smoke else time.monotonic()  # the budget: smoke's all of it, else the parts'
        parts = [p for p in plan(data, data8, out, args.smoke, cuda, args.record) if not args.only or p.group in args.only]
        print(f"gpu_check on {machine()}: {len(parts)} parts, {budget / 60:.1f} min", file=sys.stderr, flush=True)
        outcomes, weights = [], sum(p.weight for p in parts if not p.skip)  # a skipped part takes no time
        runs_left = sum(not p.skip for p in parts)
        for part in parts:
            left = budget - (time.monotonic() - clock)
            if not part.skip:  # what the later parts need: 10 s each at least; up to 3 fair shares here
                weights, runs_left = weights - part.weight, runs_left - 1
            limit = max(min(3 * left * part.weight / (weights + part.weight), left - 10 * runs_left), 10.0)
            outcome = run_part(part, limit)
            outcomes.append(outcome)
            print(f"[{part.group}] {part.name}: {outcome['status']}" + ("" if part.skip else
                  f" in {outcome['seconds']:.0f} s (limit {limit:.0f} s)"), file=sys.stderr, flush=True)
            if outcome["status"] != "ok" and outcome["tail"]:
                print(outcome["tail"], file=sys.stderr, flush=True)
        table = summary(parts, outcomes)
        cpu = sum(o["cpu_seconds"] for o in outcomes)
        text = (f"`python benchmarks/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}` on "
                f"{machine()}: {time.monotonic() - started:.0f} s in all, the parts {cpu:.0f} CPU s.\n\n{table}")
        (work / "gpu-check.md").write_text(text)
        if args.record:
            shutil.copy(work / "gpu-check.md", LEDGER / f"gpu-check-{_slug(torch.cuda.get_device_name() if cuda else 'cpu')}.md")
        print(text)
    return 0 if all(o["status"] == "ok" or o["status"].startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
