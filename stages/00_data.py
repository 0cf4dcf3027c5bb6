#!/usr/bin/env python
"""Stage 00: data in. ``gldv2``: the official GLDv2 tar shards, md5-checked, extracted, resumable;
``revisited``: Revisited Oxford / Paris and the 1M distractors from their official archives, resumable;
``from-folders``: any labelled photo folder as a Kaggle-layout competition; ``kaggle``: a Kaggle
competition's files through the kaggle CLI, unzipped and checked.

  python stages/00_data.py gldv2 --split train|index|test --out DIR [--shards 0-9] [--base-url URL] [--workers N]
  python stages/00_data.py revisited roxford5k|rparis6k|revisitop1m --out ROOT [--archives 1-3] [--base-url URL]
  python stages/00_data.py from-folders SRC --out DIR [--seed S] [--half second]
  python stages/00_data.py kaggle landmark-recognition-2021 --out DIR

gldv2 writes DIR/<split>/a/b/c/<id>.jpg, DIR/metadata/ and DIR/ground_truth/ as published, and for the
images on disk DIR/train.csv + DIR/train_clean.csv (train) or DIR/{recognition,retrieval}_solution.csv
(test, the v2.1 ground truth); a rerun skips shards already complete; a shard whose md5 does not match is
refused by name and the command exits 1 after finishing the others (landmark_kit/gldv2.py).

revisited writes ROOT/<dataset>/jpg/<name>.jpg + ROOT/<dataset>/gnd_<dataset>.pkl (revisitop1m: jpg/<listed
path> + revisitop1m.txt), the layout of the benchmark's own download script; a rerun skips archives already
complete; an archive that does not read to its end is refused by name (exit 1 after the others); images the
ground truth names but that are absent or unreadable are listed in ROOT/<dataset>/missing.csv
(landmark_kit/revisited_data.py).

SRC holds one folder per landmark (folder name = label) plus an optional distractors/ folder, or flat files
named <label>__<name> with `distractor` as the non-landmark label. DIR gets train/,
test/, index/ (a/b/c/<id>.jpg), train.csv, both solution CSVs (Public / Private, Ignored rows for
non-landmark retrieval queries), sample submissions and ground_truth.csv; the split rule is in
landmark_kit/folders.py.

Subcommands are a registry: a new source is a function (parsed arguments -> summary) decorated with
``@data_source(name, help, arguments)``, its library code a module of the sources layer (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, NamedTuple

from landmark_kit.data import DataError
from landmark_kit.folders import HALVES, build
from landmark_kit.gldv2 import SHARDS, Gldv2Config, download, parse_shards
from landmark_kit.kaggle import download_competition
from landmark_kit.revisited_data import SOURCES, RevisitedConfig, parse_archives
from landmark_kit.revisited_data import download as download_revisited

Arguments = Callable[[argparse.ArgumentParser], None]


class DataSource(NamedTuple):
    """A subcommand: its help line, its arguments, and the call that writes the folder and returns a summary
    (a non-empty ``failed`` in it makes the exit status 1)."""

    help: str
    arguments: Arguments
    fetch: Callable[[argparse.Namespace], dict]


DATA_SOURCES: dict[str, DataSource] = {}


def data_source(name: str, help: str, arguments: Arguments) -> Callable:
    """Decorator: the function (parsed arguments -> summary) becomes subcommand ``name``."""
    def add(fetch: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], dict]:
        DATA_SOURCES[name] = DataSource(help, arguments, fetch)
        return fetch

    return add


def _gldv2_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("--split", required=True, choices=sorted(SHARDS))
    g.add_argument("--out", required=True, help="dataset root: <split>/a/b/c/<id>.jpg and the CSVs go here")
    g.add_argument("--shards", help="e.g. 0-9 or 0,5,7-8 (default: all: train 0-499, index 0-99, test 0-19)")
    g.add_argument("--base-url", default=Gldv2Config.base_url)
    g.add_argument("--workers", type=int, default=Gldv2Config.workers, help="shards in flight at once")
    g.add_argument("--keep-tars", action="store_true", help="keep each verified tar after extracting it")
    g.add_argument("--no-progress", action="store_true")


@data_source("gldv2", "GLDv2 tar shards: download, md5 check, extract, CSVs (resumable)", _gldv2_arguments)
def gldv2(args: argparse.Namespace) -> dict:
    cfg = Gldv2Config(base_url=args.base_url.rstrip("/"), workers=args.workers, keep_tars=args.keep_tars)
    return download(args.split, args.out, parse_shards(args.shards, args.split), cfg,
                    progress=not args.no_progress).__dict__


def _revisited_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("dataset", choices=sorted(SOURCES))
    r.add_argument("--out", required=True, help="benchmark root: <dataset>/jpg/ and the ground truth go here")
    r.add_argument("--archives", help="e.g. 1-3 or 1,5,7-8 (default: all: revisitop1m 1-100, rparis6k 1-2)")
    r.add_argument("--base-url", default="", help="replaces the scheme and host of every official URL (a mirror)")
    r.add_argument("--workers", type=int, default=RevisitedConfig.workers, help="archives in flight at once")
    r.add_argument("--keep-archives", action="store_true", help="keep each archive after extracting it")
    r.add_argument("--no-progress", action="store_true")


@data_source("revisited", "Revisited Oxford / Paris, 1M distractors: official archives (resumable)",
             _revisited_arguments)
def revisited(args: argparse.Namespace) -> dict:
    cfg = RevisitedConfig(base_url=args.base_url, workers=args.workers, keep_archives=args.keep_archives)
    summary = download_revisited(args.dataset, args.out, parse_archives(args.archives, args.dataset), cfg,
                                 progress=not args.no_progress).__dict__
    if summary["missing_count"]:
        print(f"missing or unreadable: {summary['missing_count']} of the {summary['expected']} images "
              f"{args.dataset} lists ({args.out}/{args.dataset}/missing.csv)", file=sys.stderr)
    return summary


def _folders_arguments(f: argparse.ArgumentParser) -> None:
    f.add_argument("src", help="one folder per landmark (+ distractors/), or flat <label>__<name> files")
    f.add_argument("--out", required=True, help="the competition folder to write")
    f.add_argument("--seed", type=int, help="shuffle each landmark's photos before the first-half rule "
                                           "(default: sorted by path)")
    f.add_argument("--half", default="first", choices=HALVES, help="the split or its complement (halves swapped)")


@data_source("from-folders", "a labelled photo folder as a Kaggle-layout competition", _folders_arguments)
def from_folders(args: argparse.Namespace) -> dict:
    return build(args.src, args.out, args.half, args.seed)


def _kaggle_arguments(k: argparse.ArgumentParser) -> None:
    k.add_argument("competition", help="competition slug, e.g. landmark-recognition-2021")
    k.add_argument("--out", required=True)


@data_source("kaggle", "download a competition with the kaggle CLI into a Kaggle-layout folder", _kaggle_arguments)
def kaggle(args: argparse.Namespace) -> dict:
    return download_competition(args.competition, args.out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, source in DATA_SOURCES.items():
        source.arguments(sub.add_parser(name, help=source.help))
    args = ap.parse_args(argv)
    try:
        summary = DATA_SOURCES[args.command].fetch(args)
    except (DataError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(summary)


def _report(summary: dict) -> int:
    """Print a summary (JSON on stdout, each failure by name on stderr); 1 when anything failed."""
    print(json.dumps(summary))
    for name, reason in summary.get("failed", {}).items():
        print(f"failed: {name}: {reason}", file=sys.stderr)
    return 1 if summary.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
