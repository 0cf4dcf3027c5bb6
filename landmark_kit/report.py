"""A run report a person can look at: ``python -m landmark_kit.report --workdir W`` writes ``W/report/``
(``index.html`` + PNGs, no network needed to view it) from whatever the stages left under ``W``.

Sections, each present when its inputs are: score tables (cleaning reports, training logs, ablation and
tuning tables with their intervals, the demo table), training curves, query grids (sampled and worst test
queries with their top retrieved index images, green = same landmark, red = not), the highest-scoring
non-landmark queries with their nearest train images, local-match views (RANSAC inlier correspondences of
verified pairs), cleaning examples (kept vs removed images per label), a t-SNE map of the train descriptors
coloured by landmark with non-landmark test images in grey, a UMAP map beside it of the 10 landmarks with the
most train images (up to 50 images each, the sampling of the GE2E landmark paper) coloured by landmark, and the
index-growth curve.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import write_text
from .data import ImageLoadError, image_path, load_image, read_train_csv
from .montage import grid, thumbnail

GREEN, RED, GREY = (40, 160, 60), (200, 40, 40), (150, 150, 150)
LOG_HEADERS = {"img_s": "images/s", "lr": "learning rate", "val_gap": "validation GAP",
               "val_map100": "validation mAP@100"}


@dataclass
class ReportConfig:
    """How much of each section to show."""

    queries: int = 8  # sampled landmark queries in the grid
    worst: int = 8  # lowest-AP landmark queries
    neighbours: int = 5  # retrieved images per query row
    distractors: int = 6  # highest-scoring non-landmark queries
    matches: int = 4  # verified pairs drawn with their inliers
    labels: int = 6  # labels shown with kept and removed images
    embed: int = 1500  # train images in the t-SNE map (a sample beyond that)
    umap_landmarks: int = 10  # landmarks in the UMAP map: those with the most train images
    umap_per_landmark: int = 50  # train images per landmark in the UMAP map (a seeded sample beyond that)
    tile: int = 112
    seed: int = 0


# ----------------------------------------------------------------------------------------------- sections


class Report:
    """Collects sections (title, HTML body) and the files they reference, then writes ``index.html``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.sections: list[tuple[str, str]] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, title: str, body: str) -> None:
        self.sections.append((title, body))

    def image(self, path: Path, caption: str = "") -> str:
        rel = path.relative_to(self.out)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="{rel.as_posix()}" alt="{html.escape(caption or rel.stem)}">{cap}</figure>'

    def copy(self, src: Path, name: str) -> Path:
        dst = self.out / name
        shutil.copyfile(src, dst)
        return dst

    def write(self, title: str) -> Path:
        nav = "".join(f'<li><a href="#s{n}">{html.escape(t)}</a></li>' for n, (t, _) in enumerate(self.sections))
        body = "".join(f'<section id="s{n}"><h2>{html.escape(t)}</h2>{b}</section>'
                       for n, (t, b) in enumerate(self.sections))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
                "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;"
                "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
                "img{max-width:100%}figure{margin:0 0 1.5em}figcaption{color:#555;font-size:13px}"
                f"</style></head><body><h1>{html.escape(title)}</h1><ul>{nav}</ul>{body}</body></html>")
        return write_text(self.out / "index.html", page)


def number(value) -> str:
    """A cell as the docs tables print it: scores to 4 decimals, larger figures to 1 or none, tiny ones (learning
    rates) to 3 significant digits, integers with thousands separators, missing values empty."""
    if value is None or isinstance(value, (float, np.floating)) and np.isnan(value):
        return ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    value = float(value)
    if value != 0 and abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of already formatted cells; columns empty in every row are left out."""
    keep = [n for n in range(len(header)) if any(n < len(r) and r[n].strip() for r in rows)] if rows else []
    head = "".join(f"<th>{html.escape(header[n])}</th>" for n in keep)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[n]) if n < len(r) else ''}</td>" for n in keep) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def frame_html(frame: pd.DataFrame, headers: dict[str, str] | None = None) -> str:
    """A DataFrame as an HTML table: numbers rounded by :func:`number`, columns with no values left out."""
    headers = headers or {}
    rows = [[number(v) for v in row] for row in frame.itertuples(index=False)]
    return html_table([headers.get(c, str(c).replace("_", " ")) for c in frame.columns], rows)


def markdown_to_html(text: str) -> str:
    """Pipe tables and paragraphs of a generated markdown file as HTML (the kit's tables only need that)."""
    out, table = [], []

    def flush() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out.append(html_table(cells[0], cells[1:]))
            table.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip() and not line.startswith("<!--"):
            out.append(f"<p>{html.escape(line.strip().lstrip('#').strip())}</p>")
    flush()
    return "".join(out)


def _table_title(path: Path) -> str:
    """A section title for a stage-04 ablation or tuning table, saying what it measures."""
    if path.parent.parent.name == "ablation":
        metric = {"recognition": "GAP", "retrieval": "mAP@100"}.get(path.stem, "score")
        return f"Stage 04 step by step, {path.stem} ({metric}): recipe {path.parent.name}, each step's gain"
    chosen = {"weights": "ensemble member weights", "recipe": "stage-04 steps"}.get(path.stem, path.stem)
    return f"Tuning on a labelled folder: the {chosen} tried and kept"


def _tables(report: Report, workdir: Path) -> None:
    """Every score table a stage wrote: demo, cleaning, training logs, ablation and tuning tables."""
    demo = workdir / "demo.md"
    if demo.is_file():
        report.add("Demo: recognition (GAP) and retrieval (mAP@100) of every model", markdown_to_html(demo.read_text()))
    for path in sorted(workdir.rglob("report.json")):
        if (path.parent / "per_image.csv").is_file():
            rep = json.loads(path.read_text())
            flat = {k: v for k, v in rep.items() if not isinstance(v, dict)}
            flat.update({f"{k}: {kk}": vv for k, v in rep.items() if isinstance(v, dict) for kk, vv in v.items()})
            rows = [[k.replace("_", " "), number(v)] for k, v in flat.items()]
            pics = "".join(report.image(report.copy(path.parent / n, f"clean-{path.parent.name}-{n}"), n)
                           for n in ("inliers.png", "removed.png") if (path.parent / n).is_file())
            report.add(f"Label cleaning (stage 01) {path.parent.name}: train images kept and removed",
                       html_table(["measure", "value"], rows) + pics)
    for path in sorted(workdir.rglob("log.csv")):
        body = frame_html(pd.read_csv(path), LOG_HEADERS)
        if (path.parent / "curves.png").is_file():
            body += report.image(report.copy(path.parent / "curves.png", f"curves-{path.parent.name}.png"),
                                 "training curves")
        report.add(f"Training (stage 02) {path.parent.name}: loss, accuracy and speed per epoch", body)
    for path in sorted([*workdir.rglob("ablation/*/*.md"), *workdir.rglob("tuning/*.md")]):
        report.add(_table_title(path), markdown_to_html(path.read_text()))
    for path in sorted(workdir.rglob("*growth*.png")):
        report.add("Retrieval mAP@100 as distractors are added to the index",
                   report.image(report.copy(path, f"growth-{path.name}")))


def _solutions(data_root: Path) -> tuple[dict, dict] | None:
    from .submission import read_solution

    rec, ret = data_root / "recognition_solution.csv", data_root / "retrieval_solution.csv"
    if not (rec.is_file() and ret.is_file()):
        return None
    return read_solution(rec).all, read_solution(ret).all


def _query_grids(report: Report, run: Path, data_root: Path, cfg: ReportConfig) -> None:
    """Sampled and worst landmark queries with their top retrieved index images; top non-landmark queries."""
    from .ensemble import load_features
    from .metrics import retrieval_per_query

    solutions = _solutions(data_root)
    if solutions is None or not (run / "neighbours" / "test_index.npz").is_file():
        return
    rec_truth, ret_truth = solutions
    feats = run / "features" / "ensemble"
    test_ids, index_ids = load_features(feats, "test")[1], np.asarray(load_features(feats, "index")[1])
    with np.load(run / "neighbours" / "test_index.npz") as z:
        scores, indices = z["scores"], z["indices"]
    ranked = {q: " ".join(index_ids[indices[n][indices[n] >= 0]][:100]) for n, q in enumerate(test_ids)
              if q in ret_truth}
    order = dict(zip(ret_truth, retrieval_per_query(ranked, ret_truth)["ap"])) if ret_truth else {}
    position = {q: n for n, q in enumerate(test_ids)}
    scored = [q for q in test_ids if ret_truth.get(q)]
    rng = np.random.default_rng(cfg.seed)

    def row(q: str) -> list[np.ndarray]:
        n, truth = position[q], set(ret_truth.get(q, []))
        cells = [thumbnail(data_root, "test", q, cfg.tile, GREY, f"query AP {order.get(q, 0):.2f}")]
        for j in range(min(cfg.neighbours, indices.shape[1])):
            if indices[n, j] < 0:
                break
            hit = index_ids[indices[n, j]]
            cells.append(thumbnail(data_root, "index", hit, cfg.tile, GREEN if hit in truth else RED,
                                f"{j + 1}: {scores[n, j]:.3f}"))
        return cells

    if scored:
        sample = sorted(rng.choice(scored, min(cfg.queries, len(scored)), replace=False))
        worst = sorted(scored, key=lambda q: (order.get(q, 0), q))[: cfg.worst]
        titles = {"sampled": "test queries drawn at random", "worst": "the test queries with the lowest AP@100"}
        for name, chosen in (("sampled", sample), ("worst", worst)):
            path = grid([row(q) for q in chosen], cfg.tile, report.out / f"queries-{name}.png")
            report.add(f"Retrieval examples: {titles[name]}",
                       report.image(path, "query (grey) then its top index images: green = same landmark, "
                                          "red = not; numbers are cosine similarities; AP = AP@100"))
    with np.load(run / "neighbours" / "test_train.npz") as z:
        train_scores, train_idx = z["scores"], z["indices"]
    train_ids = np.asarray(load_features(feats, "train")[1])
    distractors = [q for q in test_ids if q in rec_truth and not rec_truth[q]]
    if distractors and train_scores.shape[1]:
        top = sorted(distractors, key=lambda q: -train_scores[position[q], 0])[: cfg.distractors]
        rows = [[thumbnail(data_root, "test", q, cfg.tile, GREY, "non-landmark")] +
                [thumbnail(data_root, "train", train_ids[train_idx[position[q], j]], cfg.tile, RED,
                        f"{train_scores[position[q], j]:.3f}")
                 for j in range(min(cfg.neighbours, train_idx.shape[1])) if train_idx[position[q], j] >= 0]
                for q in top]
        report.add("Recognition pitfalls: non-landmark photos that look most like a landmark",
                   report.image(grid(rows, cfg.tile, report.out / "distractors.png"),
                                "non-landmark test queries whose nearest train images score highest: what a "
                                "recognition submission must push down"))


def _match_views(report: Report, run: Path, data_root: Path, cfg: ReportConfig) -> None:
    """The verified pairs with the most inliers and some just above 0, drawn with their inlier lines."""
    import cv2

    from .local import FeatureStore
    from .verify import VerifyConfig, inlier_points

    pairs_dir = run / "local" / "pairs"  # chunks in test-<split>-<local digest>-<matching digest>/, or one file
    parts = sorted(pairs_dir.glob("test-*/part_*.npz")) + sorted(pairs_dir.glob("test-*.npz"))
    if not parts:
        return
    frames = []
    for part in parts:
        _, split, local_digest, _ = (part.parent.name if part.name.startswith("part_") else part.stem).split("-")
        with np.load(part) as z:
            frames.append(pd.DataFrame({"query": z["query"], "database": z["database"], "inliers": z["inliers"],
                                        "split": split, "local": local_digest}))
    pairs = pd.concat(frames).sort_values(["inliers", "query", "database"], ascending=[False, True, True])
    chosen = pd.concat([pairs.head(cfg.matches), pairs[pairs["inliers"] > 0].tail(max(cfg.matches // 2, 1))])
    figures = []
    for n, p in enumerate(chosen.drop_duplicates(["query", "database"]).itertuples()):
        stores = sorted((run / "local").glob(f"*-{p.local}"))
        if not stores:
            continue
        try:
            a = FeatureStore(stores[0] / "test").get([p.query])[p.query]
            b = FeatureStore(stores[0] / p.split).get([p.database])[p.database]
            img_a = np.asarray(load_image(image_path(data_root, "test", p.query), p.query, max(a.size)))
            img_b = np.asarray(load_image(image_path(data_root, p.split, p.database), p.database, max(b.size)))
        except (KeyError, ImageLoadError):
            continue
        src, dst = inlier_points(a, b, VerifyConfig())
        img_a = cv2.resize(img_a, a.size) if a.size != (0, 0) else img_a
        img_b = cv2.resize(img_b, b.size) if b.size != (0, 0) else img_b
        h = max(img_a.shape[0], img_b.shape[0])
        canvas = np.full((h, img_a.shape[1] + img_b.shape[1], 3), 255, np.uint8)
        canvas[: img_a.shape[0], : img_a.shape[1]] = img_a
        canvas[: img_b.shape[0], img_a.shape[1]:] = img_b
        for (x1, y1), (x2, y2) in zip(src, dst):
            cv2.line(canvas, (int(x1), int(y1)), (int(x2) + img_a.shape[1], int(y2)), (0, 220, 0), 1, cv2.LINE_AA)
        path = report.out / f"matches-{n}.png"
        cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        figures.append(report.image(path, f"test {p.query} - {p.split} {p.database}: {p.inliers} inliers "
                                          f"(stored), {len(src)} redrawn with the default matching"))
    if figures:
        report.add("Spatial verification: matched points between a test photo and an index photo", "".join(figures))


def _cleaning_examples(report: Report, workdir: Path, data_root: Path, cfg: ReportConfig) -> None:
    for per_image in sorted(workdir.rglob("per_image.csv")):
        df = pd.read_csv(per_image, dtype={"id": str})
        mixed = df.groupby("landmark_id")["kept"].agg(["sum", "size"])
        labels = mixed[(mixed["sum"] > 0) & (mixed["sum"] < mixed["size"])].index[: cfg.labels]
        rows = []
        for label in labels:
            mine = df[df["landmark_id"] == label]
            kept, removed = mine[mine["kept"]].head(4), mine[~mine["kept"]].head(4)
            rows.append([thumbnail(data_root, "train", i, cfg.tile, GREEN, f"{label} kept v{v}")
                         for i, v in zip(kept["id"], kept["verified"])] +
                        [thumbnail(data_root, "train", i, cfg.tile, RED, f"{label} removed v{v}")
                         for i, v in zip(removed["id"], removed["verified"])])
        if rows:
            path = grid(rows, cfg.tile, report.out / f"cleaning-{per_image.parent.name}.png")
            report.add(f"Label cleaning examples ({per_image.parent.name}): kept and removed photos per landmark",
                       report.image(path, "per label: kept images (green) then removed ones (red); v = verified "
                                          "same-label neighbours"))


def _embedding(report: Report, run: Path, data_root: Path, train_csv: Path, cfg: ReportConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from .ensemble import load_features

    feats = run / "features" / "ensemble"
    if not (feats / "train.npy").is_file() or not train_csv.is_file():
        return
    train, train_ids = load_features(feats, "train")
    labels = read_train_csv(train_csv).set_index("id").loc[train_ids, "landmark_id"].to_numpy()
    rng = np.random.default_rng(cfg.seed)
    keep = np.sort(rng.choice(len(train_ids), min(cfg.embed, len(train_ids)), replace=False))
    points, colours = [np.asarray(train[keep], np.float32)], [labels[keep]]
    solutions = _solutions(data_root)
    if solutions is not None and (feats / "test.npy").is_file():
        test, test_ids = load_features(feats, "test")
        grey = [n for n, q in enumerate(test_ids) if q in solutions[0] and not solutions[0][q]]
        points.append(np.asarray(test[grey], np.float32))
        colours.append(np.full(len(grey), -1))
    x, c = np.concatenate(points), np.concatenate(colours)
    xy = TSNE(2, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3)), init="pca", random_state=cfg.seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(*xy[c == -1].T, s=10, c="#bbbbbb", label="non-landmark test images")
    _, codes = np.unique(c[c != -1], return_inverse=True)
    ax.scatter(*xy[c != -1].T, s=10, c=codes, cmap="tab20", label="train images (colour = landmark)")
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(report.out / "embedding.png", dpi=100)
    plt.close(fig)
    report.add("Descriptor map (t-SNE): photos of one landmark should sit together",
               report.image(report.out / "embedding.png", f"{len(keep)} train images coloured by landmark, "
                                                         f"{int((c == -1).sum())} non-landmark test images grey"))
    _umap_map(report, np.asarray(train, np.float32), labels, cfg)


def umap_sample(labels, landmarks: int = 10, per_landmark: int = 50, seed: int = 0) -> np.ndarray:
    """Indices into ``labels`` for the UMAP map: the ``landmarks`` labels with the most images (ties: the
    smaller label first), up to ``per_landmark`` images of each (a seeded sample beyond that), grouped by
    label in that order and ascending within a label."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    chosen = values[np.lexsort((values, -counts))[:landmarks]]
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.choice(idx, min(per_landmark, len(idx)), replace=False))
             for idx in (np.flatnonzero(labels == v) for v in chosen)]
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)


def _umap_map(report: Report, train: np.ndarray, labels: np.ndarray, cfg: ReportConfig) -> None:
    """``umap.png``: UMAP (2-D) of the train descriptors of the largest landmarks, coloured by landmark."""
    keep = umap_sample(labels, cfg.umap_landmarks, cfg.umap_per_landmark, cfg.seed)
    if len(keep) < 4:  # too few points for a neighbour graph
        return
    import warnings

    import matplotlib.pyplot as plt  # the Agg backend was chosen by _embedding
    import umap  # lazy: importing it compiles numba code

    x, c = train[keep], labels[keep]
    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": wanted, deterministic
        warnings.filterwarnings("ignore", message=".*random_state.*", category=UserWarning)
        xy = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=cfg.seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10")
    _, first = np.unique(c, return_index=True)
    for n, label in enumerate(c[np.sort(first)]):  # largest landmark first, as sampled
        ax.scatter(*xy[c == label].T, s=12, color=cmap(n % 10), label=str(label))
    ax.legend(title="landmark", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(report.out / "umap.png", dpi=100)
    plt.close(fig)
    n_labels = len(first)
    report.add("Descriptor map (UMAP) of the landmarks with the most photos",
               report.image(report.out / "umap.png",
                            f"UMAP of the {n_labels} landmarks with the most train images, up to "
                            f"{cfg.umap_per_landmark} images each ({len(keep)} images, the sampling of the GE2E "
                            f"landmark paper), coloured by landmark"))


def find_run(workdir: Path) -> Path | None:
    """The most recently searched stage-03 run directory under ``workdir`` (or ``workdir`` itself)."""
    runs = [p.parent.parent for p in workdir.rglob("neighbours/test_index.npz")]
    return max(runs, key=lambda p: (p / "neighbours" / "test_index.npz").stat().st_mtime) if runs else None


def build_report(workdir, data_root=None, run=None, train_csv=None, cfg: ReportConfig | None = None) -> Path:
    """Write ``<workdir>/report/index.html`` from what ``workdir`` holds; returns its path.

    Args:
        workdir: the folder the stages wrote into; every table and figure found under it is shown.
        data_root: where the pictures come from; default ``<workdir>/synthetic`` when present.
        run: the stage-03 run directory of the query grids, matches and maps; default the latest under
            ``workdir``.
        train_csv: labels for the maps; default ``<data_root>/train.csv``.
        cfg: how much of each section to show.
    """
    cfg = cfg or ReportConfig()
    workdir = Path(workdir)
    data_root = Path(data_root) if data_root else (workdir / "synthetic" if (workdir / "synthetic").is_dir() else None)
    run = Path(run) if run else find_run(workdir)
    out = workdir / "report"
    if out.exists():
        shutil.rmtree(out)
    report = Report(out)
    _tables(report, workdir)
    if data_root is not None:
        _cleaning_examples(report, workdir, data_root, cfg)
        if run is not None:
            _query_grids(report, run, data_root, cfg)
            _match_views(report, run, data_root, cfg)
            _embedding(report, run, data_root, Path(train_csv) if train_csv else data_root / "train.csv", cfg)
    if not report.sections:
        report.add("Nothing to show", f"<p>{html.escape(str(workdir))} holds no stage outputs yet.</p>")
    return report.write(f"landmark-kit report: {workdir}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--data-root", help="the competition folder the pictures come from (default WORKDIR/synthetic)")
    ap.add_argument("--run", help="the stage-03 run directory to picture (default: the latest under WORKDIR)")
    ap.add_argument("--train-csv", help="labels for the embedding map (default DATA_ROOT/train.csv)")
    args = ap.parse_args(argv)
    print(build_report(args.workdir, args.data_root, args.run, args.train_csv))


if __name__ == "__main__":
    main()
