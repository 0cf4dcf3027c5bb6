"""Revisited Oxford and Paris (Radenović et al. 2018) end to end: extract, search, post-process, score.

    python -m landmark_kit.revisited --data-root ROOT --dataset roxford5k [rparis6k] [--distractors revisitop1m]
        --ensemble E [--recipe R] --workdir W [--no-crop] [--top N] [--label TEXT] [--record]
    python -m landmark_kit.revisited --from-folder SRC --data-root ROOT [--dataset roxford5k]  # photos -> layout
    python -m landmark_kit.revisited --table                                                 # render the ledger

The benchmark's layout: ``ROOT/<dataset>/jpg/<name>.jpg`` with ``ROOT/<dataset>/gnd_<dataset>.pkl`` (or ``.mat``),
and the distractors ``ROOT/revisitop1m/jpg/<path>`` listed by ``ROOT/revisitop1m/revisitop1m.txt``. Queries are
cropped to their ground-truth box as the protocol requires (``--no-crop``: whole images, a variant every output
names). Descriptors come from stage 03's extraction (members, multi-scale / flip TTA, each image decoded once,
saved piece by piece and resumed, unreadable images skipped and listed); the search is exact (memory-mapped
float16 distractors are streamed); a stage-04 recipe's label-free steps follow: alpha-DBA, alpha-QE and
local-feature re-ranking of a RANSAC-verified shortlist. ``--top`` defaults to the dataset's database size: without
distractors that is the full ranking the protocol scores; with them a positive ranked below it counts as missed.

Run folder ``W``::

    <dataset>/features/<member>/{db,query}.npy|.ids|.failed.csv   (query-uncropped.* with --no-crop)
    <dataset>/features/ensemble/{db,query}.npy                    weighted concatenation (+ revisitop1m.npy)
    <dataset>/local/                                              local features and verified pairs
    <dataset>/ranks.csv                                           id,images: query, top-N database names
    <dataset>/scores.json                                         what stages/05_score.py --json says of ranks.csv
    <dataset>/run.json                                            settings, steps with scores, seconds, peak RSS
    <dataset>/skipped.csv, ensemble.yaml, recipe.yaml             unreadable images; the recipes as run
    revisitop1m/features/<member>/db.npy                          distractor descriptors, shared by both datasets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import sys
import time
from collections import ChainMap, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import ledger
from .artifacts import atomic_path, atomic_write_csv, write_text
from .data import DataError, ImageSource, upright_size
from .ensemble import (EnsembleConfig, apply_whitening, concatenate, extract_members, fit_whitening, joined_features,
                       load_ensemble, load_features, neighbours_key, skipped_images)
from .folders import collect, write_jpeg
from .predict import PredictConfig, check_config, shortlist_inliers
from .recipes import load_recipe, save_recipe
from .retrieval import database_augment, local_rerank, neighbour_lists, query_expand
from .revisited_metric import (GroundTruth, evaluate, evaluate_indices, format_report, read_distractors, read_ground_truth,
                               read_ranks, with_distractors, write_ground_truth)
from .search import knn

log = logging.getLogger(__name__)
DATASETS = ("roxford5k", "rparis6k")
DISTRACTORS = ("revisitop1m",)
SHORT = {"roxford5k": "ROxf", "rparis6k": "RPar"}
# stage-04 steps that need train labels (none here): a recipe that turns them on has them skipped, with a warning
LABELLED_STEPS = {"k": 1, "suppress_fraction": 0.0, "nonlandmark_pool": None, "verify_shortlist": 0,
                  "soft_rerank": False, "rerank": False}


class FolderFiles(Mapping):
    """``name -> folder / (name + suffix)`` for a list of names: a million files without a million Paths."""

    def __init__(self, folder: str | Path, names: Iterable[str], suffix: str = "") -> None:
        self.folder, self.names, self.suffix = Path(folder), list(names), suffix
        self._known = frozenset(self.names)

    def __getitem__(self, name: str) -> Path:
        if name not in self._known:
            raise KeyError(name)
        return self.folder / f"{name}{self.suffix}"

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@dataclasses.dataclass
class Benchmark:
    """One revisited set as a run reads it: ground truth, database images, queries (cropped to their boxes)."""

    name: str
    gt: GroundTruth
    db: ImageSource
    queries: ImageSource
    crop: bool

    @property
    def query_split(self) -> str:
        """The queries' split name in the run folder: cropped and whole queries are kept apart."""
        return "query" if self.crop else "query-uncropped"


def load_benchmark(data_root, dataset: str, crop: bool = True) -> Benchmark:
    """``ROOT/<dataset>``: its ground truth (``gnd_<dataset>.pkl`` or ``.mat``) and image sources."""
    folder = Path(data_root) / dataset
    found = [folder / f"gnd_{dataset}{suffix}" for suffix in (".pkl", ".mat")]
    gt = read_ground_truth(next((p for p in found if p.is_file()), found[0]))
    images = folder / "jpg"
    if not images.is_dir():
        raise DataError(f"{images}: image folder not found (the benchmark's layout: {folder}/jpg/<name>.jpg)")
    boxes = {q: g["bbx"] for q, g in zip(gt.qimlist, gt.gnd) if crop and g["bbx"] is not None}
    if crop and len(boxes) < len(gt.qimlist):
        log.warning("%d of %d queries of %s have no box: used whole", len(gt.qimlist) - len(boxes),
                    len(gt.qimlist), gt.path)
    return Benchmark(dataset, gt, ImageSource(FolderFiles(images, gt.imlist, ".jpg")),
                     ImageSource(FolderFiles(images, gt.qimlist, ".jpg"), boxes), crop)


def load_distractors(data_root, name: str) -> tuple[list[str], ImageSource]:
    """The distractor names (``ROOT/<name>/<name>.txt``, one path under ``jpg/`` a line) and their files."""
    folder = Path(data_root) / name
    names = read_distractors(folder / f"{name}.txt")
    return names, ImageSource(FolderFiles(folder / "jpg", names))


def join_distractors(cfg: EnsembleConfig, run: Path, members_dir: Path, ids: list[str], name: str,
                     block: int = 16384) -> np.ndarray:
    """The ensemble's descriptors of the distractors (weights and whitening of the dataset run ``run``), joined
    block by block into ``run/features/ensemble/<name>.npy`` (written, not memory-mapped: no dirty pages held)
    and returned memory-mapped; kept while the ensemble is the same."""
    out, key = run / "features" / "ensemble", neighbours_key(cfg)
    try:
        feats, done = load_features(out, name)
        if done == ids and (out / f"{name}.key").read_text() == key:
            return feats
    except (OSError, DataError):  # absent or damaged: joined again
        pass
    member_whitenings = {m.name: fit_whitening(np.asarray(load_features(run / "features" / m.name, "db")[0],
                                                          np.float32)) for m in cfg.members if m.whiten}
    whitening = dict(np.load(out / "whitening.npz")) if cfg.whiten else None
    with atomic_path(out / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
        for start in tqdm(range(0, len(ids), block), desc=f"join {name}", unit="block"):
            rows = joined_features(cfg.members, members_dir, "db", whitenings=member_whitenings,
                                   rows=slice(start, start + block))[0]
            if whitening is not None:
                rows = apply_whitening(rows, whitening)
            if start == 0:
                np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(
                    np.dtype(cfg.store_dtype)), "fortran_order": False, "shape": (len(ids), rows.shape[1])})
            fh.write(np.ascontiguousarray(rows, dtype=cfg.store_dtype).tobytes())
    write_text(out / f"{name}.ids", "\n".join(ids) + "\n")
    write_text(out / f"{name}.key", key)
    return load_features(out, name)[0]


def search(queries: np.ndarray, parts: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over several database parts as one database (rows numbered across the parts in order)."""
    scores, rows, offset = [], [], 0
    for part in parts:
        if len(part):
            s, i = knn(queries, part, min(k, len(part)))
            scores.append(s)
            rows.append(np.where(i >= 0, i + offset, -1))
        offset += len(part)
    s, i = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)
    order = np.argsort(-np.where(i >= 0, s, -np.inf), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def gather(parts: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Database rows (numbered across ``parts``) as one float32 array, each read from its part's memory map."""
    bounds = np.cumsum([0] + [len(p) for p in parts])
    out = np.empty((len(rows), parts[0].shape[1]), np.float32)
    for n, part in enumerate(parts):
        mine = (rows >= bounds[n]) & (rows < bounds[n + 1])
        out[mine] = part[rows[mine] - bounds[n]]
    return out


def retrieval_chain(recipe: PredictConfig, queries: np.ndarray, parts: list[np.ndarray], k: int,
                    verify: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The label-free retrieval steps of a stage-04 recipe, one ``(step, scores, rows)`` each: exact kNN, then
    alpha-DBA over the whole database and alpha-QE (a new search), then the first ``local_rerank`` rows
    re-sorted by similarity x sqrt(inliers) (``verify``: shortlist rows -> inlier counts)."""
    scores, rows = search(queries, parts, k)
    yield "kNN (exact)", scores, rows
    if recipe.dba_k > 0 or recipe.qe_k > 0:
        if recipe.dba_k > 0:
            parts = [database_augment(np.concatenate([np.asarray(p, np.float32) for p in parts]), recipe.dba_k,
                                      recipe.qe_alpha)]
            scores, rows = search(queries, parts, k)
        if recipe.qe_k > 0:
            head = rows[:, : recipe.qe_k]
            needed = np.unique(head[head >= 0])  # only the expanding rows are read, not the whole database
            local_rows = np.where(head >= 0, np.searchsorted(needed, head), -1)
            expanded = query_expand(queries, gather(parts, needed), scores[:, : recipe.qe_k], local_rows,
                                    recipe.qe_k, recipe.qe_alpha)
            scores, rows = search(expanded, parts, k)
        names = [f"DBA (k={recipe.dba_k})"] * (recipe.dba_k > 0) + [f"alpha-QE (k={recipe.qe_k})"] * (recipe.qe_k > 0)
        yield f"+ {', '.join(names)} (alpha={recipe.qe_alpha:g})", scores, rows
    if recipe.local_rerank > 0 and verify is not None:
        rows, scores = local_rerank(rows, scores, verify(rows[:, : recipe.local_rerank]))
        yield f"+ local-feature re-ranking ({recipe.local.backend}, top {recipe.local_rerank})", scores, rows


def peak_rss_mib() -> int:
    """This process's peak resident memory so far, MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def plain(scores: Mapping[str, Mapping[str, float]]) -> dict:
    """Scores as stages/05_score.py --json writes them: NaN (a protocol without positives) as null."""
    return {p: {k: None if math.isnan(v) else v for k, v in row.items()} for p, row in scores.items()}


def variant(crop: bool) -> str:
    """How the queries were used, in words every output repeats."""
    return "cropped to their boxes (the protocol)" if crop else "whole images (--no-crop variant, not the protocol)"


def describe(cfg: EnsembleConfig, bench: Benchmark, data_root, run: Path) -> Path:
    """Extract what is missing of the dataset's database and queries (stage 03's members, pieces and failures) and
    concatenate them as the ensemble says (whitening, if any, learned on the database); returns the folder."""
    gt = bench.gt
    for split, ids, source in (("db", gt.imlist, bench.db), (bench.query_split, gt.qimlist, bench.queries)):
        extract_members(cfg.members, cfg, data_root, run, (split,), ids_by_split={split: ids}, source=source)
    return concatenate(cfg.members, run, ("db", bench.query_split), cfg.store_dtype,
                       whiten_split="db" if cfg.whiten else None, whiten_dim=cfg.whiten_dim, member_whiten_split="db")


def add_distractors(cfg: EnsembleConfig, bench: Benchmark, data_root, workdir, run: Path, name: str
                    ) -> tuple[np.ndarray, list[str], ImageSource]:
    """The distractors' joined descriptors (memory-mapped), names and files, extracted once into
    ``workdir/<name>/`` for every dataset."""
    ids, source = load_distractors(data_root, name)
    clash = set(ids) & set(bench.gt.imlist)
    if clash:
        raise DataError(f"{name}: {len(clash)} name(s) also in {bench.name}'s database, e.g. {min(clash)}")
    members_dir = Path(workdir) / name
    extract_members(cfg.members, cfg, data_root, members_dir, ("db",), ids_by_split={"db": ids}, source=source)
    return join_distractors(cfg, run, members_dir, ids, name), ids, source


def run_benchmark(cfg: EnsembleConfig, recipe: PredictConfig, data_root, dataset: str, workdir,
                  distractors: str | None = None, crop: bool = True, top: int | None = None) -> dict:
    """Extract, search, post-process and score one dataset into ``workdir/<dataset>/``; returns the summary
    written to its ``run.json`` (scores of every step; the last step's are those of ``ranks.csv``)."""
    check_config(recipe)
    ignored = [name for name, off in LABELLED_STEPS.items() if getattr(recipe, name) != off]
    if ignored:
        log.warning("recipe steps that need train labels are skipped here: %s", ", ".join(ignored))
    started = time.perf_counter()
    bench, run = load_benchmark(data_root, dataset, crop), Path(workdir) / dataset
    run.mkdir(parents=True, exist_ok=True)
    save_recipe(cfg, run / "ensemble.yaml")
    save_recipe(recipe, run / "recipe.yaml")
    features = describe(cfg, bench, data_root, run)
    parts, names, db_source = [load_features(features, "db", mmap=False)[0]], list(bench.gt.imlist), bench.db
    if distractors:
        feats, ids, source = add_distractors(cfg, bench, data_root, workdir, run, distractors)
        parts, names = parts + [feats], names + ids
        db_source = ImageSource(ChainMap(bench.db.paths, source.paths))
    seconds = {"descriptors": time.perf_counter() - started}
    gt = with_distractors(bench.gt, names[len(bench.gt.imlist):], distractors or "distractors")
    queries = np.asarray(load_features(features, bench.query_split, mmap=False)[0], np.float32)
    top = min(top or len(bench.gt.imlist), len(names))

    def verify(shortlist: np.ndarray) -> np.ndarray:
        return shortlist_inliers(recipe, data_root, run, gt.qimlist, names, shortlist, "db",
                                 query_split=bench.query_split, query_source=bench.queries, db_source=db_source)

    steps, clock = [], time.perf_counter()
    for step, _, rows in retrieval_chain(recipe, queries, parts, min(max(top, recipe.local_rerank), len(names)),
                                         verify):
        now = time.perf_counter()
        steps.append({"step": step, "seconds": round(now - clock, 2),
                      "scores": plain(evaluate_indices(gt, rows[:, :top]))})
        clock = now
    ranks = run / "ranks.csv"
    ranked = [" ".join(row) for row in neighbour_lists(rows, names, top)]
    atomic_write_csv(pd.DataFrame({"id": gt.qimlist, "images": ranked}), ranks)
    scores = plain(evaluate(gt, read_ranks(ranks, gt)))  # what stage 05 says of the file
    write_text(run / "scores.json", json.dumps(scores, indent=2) + "\n")
    skipped = pd.concat([skipped_images(run, ("db", bench.query_split))]  # descriptors and local features
                        + ([skipped_images(Path(workdir) / distractors, ("db",)).assign(split=distractors)]
                           if distractors else []), ignore_index=True)
    atomic_write_csv(skipped, run / "skipped.csv")
    if len(skipped):
        log.warning("%d unreadable image(s) went without descriptors or local features: listed in %s",
                    len(skipped), run / "skipped.csv")
    seconds["total"] = time.perf_counter() - started
    summary = {"dataset": dataset, "distractors": distractors, "queries": variant(crop), "crop": crop,
               "query_count": len(gt.qimlist), "database": len(bench.gt.imlist),
               "distractor_count": len(names) - len(bench.gt.imlist), "top": top,
               "members": [m.name for m in cfg.members], "ignored_steps": ignored, "skipped": len(skipped),
               "steps": steps, "scores": scores, "seconds": {step: round(t, 1) for step, t in seconds.items()},
               "peak_rss_mib": peak_rss_mib(), "ranks": str(ranks), "scores_file": str(run / "scores.json")}
    write_text(run / "run.json", json.dumps(summary, indent=2) + "\n")
    return summary


def report(summary: dict) -> str:
    """The run's table (mAP, mP@k per protocol, percent) under a title naming the set and the query variant,
    after one line per step."""
    set_name = summary["dataset"] + (f" + {summary['distractors']}" if summary["distractors"] else "")
    lines = [f"{step['step']:<60} M {_percent(step['scores']['medium']['map'])}  "
             f"H {_percent(step['scores']['hard']['map'])}  ({step['seconds']} s)" for step in summary["steps"]]
    title = (f"{set_name}: {summary['query_count']} queries {summary['queries']}, "
             f"{summary['database'] + summary['distractor_count']:,} database images, top {summary['top']:,} ranked")
    scores = {p: {k: math.nan if v is None else v for k, v in row.items()} for p, row in summary["scores"].items()}
    return "\n".join(lines + ["", format_report(scores, title)])


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def layout_from_folder(src, data_root, dataset: str = "roxford5k") -> dict:
    """A revisited-layout set ``ROOT/<dataset>`` from labelled photos (either layout of :mod:`landmark_kit.folders`):
    per landmark the first photo (sorted by path) is a query boxed whole, the others database images that are its
    Easy positives; distractors (and landmarks of one photo) join the database. No Hard or junk images (Hard has
    no positives: n/a)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key, label in sorted(collect(src)):
        groups[label].append(key)
    queried = sorted(label for label, keys in groups.items() if label and len(keys) > 1)
    queries = [groups[label][0] for label in queried]
    database = [key for label, keys in sorted(groups.items()) for key in (keys[1:] if label in queried else keys)]
    name = {key: Path(key).with_suffix("").as_posix().replace("/", "__") for key in queries + database}
    if len(set(name.values())) != len(name):
        raise DataError(f"{src}: two photos differ only in their extension; rename one")
    folder, row = Path(data_root) / dataset, {key: n for n, key in enumerate(database)}
    for key in queries + database:
        write_jpeg(Path(src) / key, folder / "jpg" / f"{name[key]}.jpg")
    label_of = {keys[0]: label for label, keys in groups.items()}
    gnd = []
    for query in queries:
        width, height = upright_size(folder / "jpg" / f"{name[query]}.jpg")
        gnd.append({"bbx": [0.0, 0.0, float(width), float(height)],
                    "easy": [row[k] for k in groups[label_of[query]][1:]], "hard": [], "junk": []})
    ground_truth = {"imlist": [name[k] for k in database], "qimlist": [name[k] for k in queries], "gnd": gnd}
    write_ground_truth(folder / f"gnd_{dataset}.pkl", ground_truth)
    return {"queries": len(queries), "database": len(database), "distractors": len(groups.get("", [])),
            "folder": str(folder)}


def _map_cell(key: str, protocol: str) -> Callable[[dict], str]:
    """A ledger column: the entry's mAP (percent) for one set and protocol, empty when it did not run it."""
    def cell(row: dict) -> str:
        scores = row.get("scores", {})
        return _percent(scores[key][protocol]["map"]) if key in scores else ""
    return cell


COLUMNS = {"data": "data", "method": "method", "queries": "queries",
           **{f"{SHORT[d]}{'+1M' if x else ''} {p[0].upper()}": _map_cell(d + ("+revisitop1m" if x else ""), p)
              for d in DATASETS for x in (False, True) for p in ("medium", "hard")},
           "peak RSS (MiB)": "peak_rss_mib", "seconds": "seconds"}
TABLE = ledger.Table("revisited", COLUMNS,
                     "mAP (%) under the Revisited protocol, Medium (M) and Hard (H), as in smlyaka 2019's Table 2; "
                     "rows marked [n] are published figures transcribed from the paper named below them, not "
                     "measured here; a row whose data is not the benchmark measures another set in its layout and "
                     "is not comparable with them.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", help="folder holding <dataset>/ (and revisitop1m/)")
    ap.add_argument("--dataset", nargs="+", choices=DATASETS, help="one or both sets (one ledger row for all)")
    ap.add_argument("--distractors", choices=DISTRACTORS, help="add the 1M distractors to every database")
    ap.add_argument("--ensemble", help="ensemble recipe (ensembles/*.yaml), as stage 03 takes it")
    ap.add_argument("--recipe", help="stage-04 recipe: its dba_k, qe_k, qe_alpha, local_rerank, local, verify")
    ap.add_argument("--workdir", help="run folder (W/<dataset>/ranks.csv, scores.json, run.json)")
    ap.add_argument("--no-crop", action="store_true", help="queries whole instead of cropped to their boxes")
    ap.add_argument("--top", type=int, help="database names ranked per query (default: the dataset's database)")
    ap.add_argument("--label", help="what the data is, for the ledger row (default: the dataset names)")
    ap.add_argument("--from-folder", metavar="SRC", help="write a revisited-layout set from labelled photos, then exit")
    args = ledger.parse_args(ap, TABLE)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    datasets = args.dataset or ["roxford5k"]
    if args.from_folder:
        if not args.data_root:
            ap.error("--from-folder needs --data-root")
        for dataset in datasets:
            print(json.dumps(layout_from_folder(args.from_folder, args.data_root, dataset)))
        return
    needed = ("data_root", "dataset", "ensemble", "workdir")
    missing = [f"--{n.replace('_', '-')}" for n in needed if not getattr(args, n)]
    if missing:
        ap.error(f"missing {', '.join(missing)}")
    try:
        cfg, recipe = load_ensemble(args.ensemble), load_recipe(PredictConfig, args.recipe)
        summaries = [run_benchmark(cfg, recipe, args.data_root, dataset, args.workdir, args.distractors,
                                   not args.no_crop, args.top) for dataset in datasets]
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for summary in summaries:
        print(report(summary), end="\n\n")
        print(f"wrote {summary['ranks']} and {summary['scores_file']} (peak RSS {summary['peak_rss_mib']:,} MiB)")
    if args.record:
        method = args.ensemble + (f" + {args.recipe}" if args.recipe else "")
        key = "+" + args.distractors if args.distractors else ""
        entry = {"data": args.label or " / ".join(datasets) + (f" + {args.distractors}" if args.distractors else ""),
                 "method": method, "queries": "cropped" if not args.no_crop else "whole (--no-crop)",
                 "scores": {s["dataset"] + key: s["scores"] for s in summaries},
                 "steps": {s["dataset"] + key: s["steps"] for s in summaries},
                 "peak_rss_mib": max(s["peak_rss_mib"] for s in summaries),
                 "seconds": round(sum(s["seconds"]["total"] for s in summaries), 1)}
        ledger.record(TABLE.name, entry, argv=["-m", "landmark_kit.revisited", *sys.argv[1:]])
        print(TABLE.render())


if __name__ == "__main__":
    main()
