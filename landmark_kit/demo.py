"""The demo job: synthetic competition -> clean -> train -> extract -> predict -> score, printed as one table.

Cleaning (stage 01) runs and reports its noise precision / recall. Rows: a learning-free colour-histogram
baseline, EfficientNet-Lite0 with random weights, the same with ImageNet weights zero-shot, the model
fine-tuned on the raw (noisy) train list, the same recipe fine-tuned on the cleaned list for the same
number of optimizer steps, and the two-member ensemble (`ensembles/synthetic-ensemble.yaml`) of the
last model with the zero-shot one. Then stage 04's post-processing chain (`submissions/full.yaml`) step by
step on that ensemble: two tables shaped like smlyaka 2019's Tables 3 and 4. Every step resumes: a second run
reuses what the first one finished. Last, the run report (``landmark_kit.report``) is written and its path
printed.

    python -m landmark_kit.demo [--workdir runs/demo] [--landmarks 40 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from .ablation import ablate, format_markdown
from .baselines import run_histogram_baseline
from .cleaning import CleanConfig, clean
from .artifacts import write_text
from .data import read_train_csv, scan_split
from .ensemble import load_ensemble, run_ensemble
from .intervals import Bootstrap, format_delta
from .ledger import machine, markdown_table
from .predict import PredictConfig, predict
from .recipes import load_recipe
from .report import build_report
from .scoring import score_files
from .submission import read_solution
from .synthetic import SyntheticConfig, generate
from .train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
# The demo's test and index are larger than the generator's defaults (train is the same): with ~270 scored
# queries instead of ~100, the table's headline deltas come with intervals narrow enough to mean something.
DEMO_TEST_PER_LANDMARK, DEMO_INDEX_PER_LANDMARK = 8.0, 6.0


def ensure_synthetic(root: Path, cfg: SyntheticConfig) -> None:
    """Generate the competition unless ``root`` already holds one made with the same config."""
    meta = root / "synthetic.json"
    if meta.is_file() and json.loads(meta.read_text()).get("config") == json.loads(json.dumps(asdict(cfg))):
        print(f"synthetic competition already in {root}")
        return
    summary = generate(root, cfg)
    print(f"generated {summary['images']} images of {summary['landmarks']} landmarks in {summary['seconds']} s")


def score_row(name: str, data: Path, rec: Path, ret: Path) -> dict:
    r = score_files(data / "recognition_solution.csv", rec)["scores"]["All"]
    s = score_files(data / "retrieval_solution.csv", ret)["scores"]["All"]
    return {"method": name, "GAP": r["GAP"], "GAP_lm": r["GAP_landmarks_only"], "top1": r["top1"],
            "mAP@100": s["mAP@100"], "P@1": s["precision@k"][0], "files": (rec, ret)}


def add_deltas(rows: list[dict], data: Path) -> None:
    """Each row's GAP and mAP@100 change over the row above, with 95% paired-bootstrap intervals over the
    test queries (1000 seeded resamples), read from the rows' submission files."""
    boot = Bootstrap(read_solution(data / "recognition_solution.csv"), read_solution(data / "retrieval_solution.csv"),
                     scan_split(data, "test"))
    previous = None
    for row in rows:
        current = boot.submissions(*row["files"])
        row["dGAP"], row["dmAP"] = ("", "") if previous is None else (
            format_delta(current[0] - previous[0]), format_delta(current[1] - previous[1]))
        previous = current


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<38} {'GAP':>7} {'GAP(lm)':>8} {'top-1':>7} {'mAP@100':>8} {'P@1':>6}"
             f"  {'GAP delta [95% CI]':<27} mAP@100 delta [95% CI]"]
    for r in rows:
        lines.append(f"{r['method']:<38} {r['GAP']:>7.4f} {r['GAP_lm']:>8.4f} {r['top1']:>7.4f}"
                     f" {r['mAP@100']:>8.4f} {r['P@1']:>6.3f}  {r['dGAP']:<27} {r['dmAP']}")
    return "\n".join(lines)


def score_table(rows: list[dict]) -> str:
    """The demo's score rows as a markdown table."""
    return markdown_table([{"method": r["method"], "GAP": f"{r['GAP']:.4f}", "GAP (landmarks only)": f"{r['GAP_lm']:.4f}",
                            "top-1": f"{r['top1']:.4f}", "mAP@100": f"{r['mAP@100']:.4f}", "P@1": f"{r['P@1']:.3f}",
                            "GAP delta [95% CI]": r["dGAP"], "mAP@100 delta [95% CI]": r["dmAP"]}
                           for r in rows])


def same_steps_epochs(epochs: int, batch_size: int, raw_images: int, kept_images: int) -> int:
    """Epochs on the cleaned list that give (about) the optimizer steps of ``epochs`` on the raw list."""
    steps = epochs * -(-raw_images // batch_size)
    return max(1, round(steps / -(-kept_images // batch_size)))


def run_cleaning(data: Path, out: Path, workdir: Path) -> None:
    """Stage 01 with ``cleaning/synthetic.yaml``, reported against the injected-noise ground truth.

    ``workdir`` is the imagenet-lite0 ensemble run, whose train descriptors the cleaning kNN shares.
    """
    start = time.time()
    report = clean(load_recipe(CleanConfig, REPO / "cleaning" / "synthetic.yaml"), data, out, workdir)
    truth = report["against_ground_truth"]
    print(f"cleaning ({time.time() - start:.0f} s): kept {report['kept']} of {report['images']} train images; "
          f"noise precision {truth['precision']:.3f}, recall {truth['recall']:.3f}, "
          f"clean kept {truth['clean_kept']:.3f} -> {out / 'train_clean.csv'}")


def run_demo(workdir: Path, synthetic: SyntheticConfig, train_overrides: dict | None = None
             ) -> tuple[list[dict], dict[str, pd.DataFrame]]:
    """Run every step into ``workdir``; returns the score rows and the stage-04 ablation tables of the
    ensemble (``submissions/full.yaml``)."""
    data = workdir / "synthetic"
    subs = workdir / "submissions"
    clock = time.time()
    ensure_synthetic(data, synthetic)
    run_cleaning(data, workdir / "cleaning" / "synthetic", workdir / "ensemble" / "imagenet-lite0")
    rows = [score_row("colour histogram kNN (no learning)", data,
                      *run_histogram_baseline(data, subs / "histogram-knn"))]
    train_cfg = load_recipe(TrainConfig, REPO / "training" / "synthetic-lite0.yaml", train_overrides)
    runs = [("random-lite0", "random-lite0", "lite0 random init, GeM (no learning)", None),
            ("calibration-lite0", "imagenet-lite0", "lite0 ImageNet zero-shot, GeM", None)]
    start = time.time()
    checkpoint = train(train_cfg, data, workdir / "train" / "synthetic-lite0")
    print(f"trained {checkpoint} ({time.time() - start:.0f} s)")
    runs.append(("synthetic-lite0", "synthetic-lite0", "lite0 fine-tuned, raw list (stage 02)", checkpoint))
    clean_csv = workdir / "cleaning" / "synthetic" / "train_clean.csv"
    kept = len(read_train_csv(clean_csv))
    if kept:
        epochs = same_steps_epochs(train_cfg.epochs, train_cfg.batch_size, len(read_train_csv(data / "train.csv")),
                                   kept)
        cleaned_cfg = replace(train_cfg, train_csv=str(clean_csv), epochs=epochs)
        start = time.time()
        cleaned = train(cleaned_cfg, data, workdir / "train" / "synthetic-lite0-cleaned")
        print(f"trained {cleaned} ({time.time() - start:.0f} s)")
        runs.append(("synthetic-lite0", "synthetic-lite0-cleaned", "same, cleaned list, same steps", cleaned))
    runs.append(("synthetic-ensemble", "synthetic-ensemble", "ensemble: row above + zero-shot lite0",
                 runs[-1][3]))
    for recipe, name, label, trained in runs:
        start = time.time()
        cfg = load_ensemble(REPO / "ensembles" / f"{recipe}.yaml")
        for member in cfg.members:
            if trained is not None and member.checkpoint is not None:
                member.checkpoint, member.image_size = str(trained), train_cfg.image_size
        # members already extracted for an earlier row (same config and checkpoint) are not extracted again
        run_ensemble(cfg, data, workdir / "ensemble" / name, reuse_from=[workdir / "ensemble" / r[1] for r in runs])
        rows.append(score_row(label, data, *predict(data, workdir / "ensemble" / name, subs / name)))
        print(f"{label}: extracted and predicted ({time.time() - start:.0f} s)")
    add_deltas(rows, data)
    name = runs[-1][1]
    start = time.time()
    tables = ablate(data, workdir / "ensemble" / name, load_recipe(PredictConfig, REPO / "submissions" / "full.yaml"),
                    data / "recognition_solution.csv", data / "retrieval_solution.csv",
                    workdir / "ensemble" / name / "ablation" / "full", submission_dir=subs / f"{name}-full")
    print(f"stage 04 step by step ({time.time() - start:.0f} s); all steps {time.time() - clock:.0f} s")
    return rows, tables


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--landmarks", type=int, default=SyntheticConfig.landmarks)
    ap.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    ap.add_argument("--test-per-landmark", type=float, default=DEMO_TEST_PER_LANDMARK)
    ap.add_argument("--index-per-landmark", type=float, default=DEMO_INDEX_PER_LANDMARK)
    ap.add_argument("--epochs", type=int, help="override the training recipe's epochs (quick runs)")
    ap.add_argument("--image-size", type=int, help="override the training recipe's image size")
    ap.add_argument("--train-seed", type=int, help="override the training recipe's seed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.time()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("image_size", args.image_size), ("seed", args.train_seed))
                 if v is not None}
    workdir = Path(args.workdir)
    synthetic = SyntheticConfig(landmarks=args.landmarks, seed=args.seed, test_per_landmark=args.test_per_landmark,
                                index_per_landmark=args.index_per_landmark)
    rows, tables = run_demo(workdir, synthetic, overrides)
    data = workdir / "synthetic"
    queries = len(read_solution(data / "retrieval_solution.csv").all)
    write_text(workdir / "demo.md", f"`python -m landmark_kit.demo` on {machine()}: All = Public + Private, "
                                    f"{len(scan_split(data, 'test'))} test images ({queries} scored retrieval "
                                    f"queries).\n\n" + score_table(rows))
    print()
    print(f"synthetic competition, All (Public + Private); demo took {time.time() - start:.0f} s")
    print(format_table(rows))
    for track, caption in (("recognition", "Table 4 (recognition, GAP)"),
                           ("retrieval", "Table 3 (retrieval, mAP@100)")):
        print(f"\nstage 04 step by step on the ensemble, like smlyaka 2019's {caption}; submissions/full.yaml")
        print(format_markdown(tables[track], track), end="")
    print(f"\nrun report (python -m landmark_kit.report --workdir {workdir}): {build_report(workdir)}")


if __name__ == "__main__":
    main()
