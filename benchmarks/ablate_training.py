"""Stage-02 ablation on the demo's synthetic competition: every training head (softmax, ArcFace, CosFace,
sub-center ArcFace + dynamic margins, triplet, GE2E, the U-Net reconstruction baseline), several seeds, and
with ``--final`` each also with one more epoch at larger sides with BatchNorm frozen.

Every variant is the demo's recipe (``training/synthetic-lite0.yaml``) with only the named fields changed (and
``--epochs`` main epochs, 8 by default); each trained model alone, plain kNN (stage 03 + 04 defaults), scored
like stage 05; mean and spread (sample standard deviation) over the seeds, and each head's difference from
ArcFace averaged over the seeds, with a 95% paired-bootstrap interval over the test queries (the same resamples
for every seed, as the kit's other tables). Resumable: finished trainings and extractions are reused on a rerun;
the demo's synthetic competition is generated first when ``--data`` does not hold it.

    python benchmarks/ablate_training.py [--data runs/demo/synthetic --workdir runs/ablate-heads --seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from landmark_kit.artifacts import write_text
from landmark_kit.data import scan_split
from landmark_kit.demo import DEMO_INDEX_PER_LANDMARK, DEMO_TEST_PER_LANDMARK, ensure_synthetic, score_row
from landmark_kit.ensemble import EnsembleConfig, MemberConfig, run_ensemble
from landmark_kit.intervals import Bootstrap, Estimate, format_delta
from landmark_kit.predict import predict
from landmark_kit.ledger import machine, markdown_table
from landmark_kit.recipes import load_recipe
from landmark_kit.submission import read_solution
from landmark_kit.synthetic import SyntheticConfig
from landmark_kit.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
BASELINE = "ArcFace"
HEADS = {
    "softmax": {"head": "softmax"},
    "ArcFace": {"head": "arcface"},
    "CosFace": {"head": "cosface"},
    "sub-center ArcFace k=3 + dynamic margins": {"head": "subcenter", "subcenters": 3, "dynamic_margin": True},
    "triplet, batch-hard (8 landmarks x 4 images)": {"head": "triplet", "mining": "batch-hard", "per_class": 4},
    "GE2E (8 landmarks x 4 images)": {"head": "ge2e", "per_class": 4},
    "U-Net reconstruction (no labels)": {"head": "reconstruction"},
}
FINAL = {"final_epochs": 1, "final_sides": [160]}  # the main epochs at 128 px, then one at 160 px, BN frozen


def run_variant(data: Path, workdir: Path, overrides: dict) -> dict:
    """Train one variant (or reuse it), extract test/train/index with it alone, predict, score."""
    cfg = load_recipe(TrainConfig, REPO / "training" / "synthetic-lite0.yaml", overrides)
    checkpoint = train(cfg, data, workdir / "train", progress=False)
    side = max(cfg.final_sides or cfg.sides or [cfg.image_size])
    ensemble = EnsembleConfig(members=[MemberConfig(name="model", checkpoint=str(checkpoint), image_size=side)])
    run_ensemble(ensemble, data, workdir / "ensemble")
    return score_row("", data, *predict(data, workdir / "ensemble", workdir / "submission"))


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _mean(estimates: list[Estimate]) -> Estimate:
    total = estimates[0]
    for estimate in estimates[1:]:
        total = total + estimate
    return total.scale(1 / len(estimates))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/demo/synthetic", help="made like the demo's when missing")
    ap.add_argument("--workdir", default="runs/ablate-heads")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    ap.add_argument("--final", action="store_true", help="each head also with a final BN-frozen epoch at 160 px")
    ap.add_argument("--epochs", type=int, default=8, help="main epochs of every variant")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.workdir)
    ensure_synthetic(data, SyntheticConfig(test_per_landmark=DEMO_TEST_PER_LANDMARK,
                                           index_per_landmark=DEMO_INDEX_PER_LANDMARK))
    variants = [(head, final) for head in args.heads for final in ((False, True) if args.final else (False,))]
    scores: dict[tuple[str, bool], list[dict]] = {v: [] for v in variants}
    for seed in args.seeds:  # seed-major: a stopped run already covers every variant; a rerun reuses all
        for head, final in variants:
            slug = f"{HEADS[head]['head']}{'-final' if final else ''}-s{seed}"
            score = run_variant(data, out / slug, {**HEADS[head], **(FINAL if final else {}), "seed": seed,
                                                             "epochs": args.epochs})
            scores[(head, final)].append(score)
            print(f"{slug}: GAP {score['GAP']:.4f} mAP@100 {score['mAP@100']:.4f}", flush=True)
    boot = Bootstrap(read_solution(data / "recognition_solution.csv"), read_solution(data / "retrieval_solution.csv"),
                     scan_split(data, "test"))
    paired = {v: [boot.submissions(*s["files"]) for s in scores[v]] for v in variants}
    rows, raw = [], {}
    for head, final in variants:
        name = head + (" + final BN-frozen epoch at 160 px" if final else "")
        gap = np.array([s["GAP"] for s in scores[(head, final)]])
        mean_ap = np.array([s["mAP@100"] for s in scores[(head, final)]])
        raw[name] = {"GAP": gap.tolist(), "mAP@100": mean_ap.tolist()}
        row = {"variant": name, "GAP mean": f"{gap.mean():.4f}", "GAP sd": f"{_sd(gap):.4f}",
               "mAP@100 mean": f"{mean_ap.mean():.4f}", "mAP@100 sd": f"{_sd(mean_ap):.4f}"}
        base = (BASELINE, final)
        if base in paired:
            for metric, i in (("GAP", 0), ("mAP@100", 1)):
                row[f"{metric} vs {BASELINE} [95%]"] = "" if base == (head, final) else format_delta(
                    _mean([mine[i] - theirs[i] for mine, theirs in zip(paired[(head, final)], paired[base])]))
        rows.append(row)
    text = (f"{machine()}; `python benchmarks/ablate_training.py --seeds {' '.join(map(str, args.seeds))} --epochs "
            f"{args.epochs}{' --final' if args.final else ''}` on `{data}` ({len(args.seeds)} seeds each, "
            f"{len(boot.queries)} test queries; sd = sample standard deviation over the seeds; vs {BASELINE}: the "
            f"difference averaged over the seeds, 95% paired-bootstrap interval over the queries).\n\n"
            + markdown_table(rows) + "\n")
    write_text(out / "ablation.md", text)
    write_text(out / "ablation.json", json.dumps(raw, indent=1))
    print(text)


if __name__ == "__main__":
    main()
