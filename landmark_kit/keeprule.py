"""The keep rule measured by transfer: how often does a rule keep a step that hurts elsewhere, or reject one
that clearly helps? And does the whole tuned choice hold up on photos it was not tuned on?

A labelled photo folder is cut into two halves of different photos (per landmark the first half of its photos
and the rest, distractors alternating; :func:`landmark_kit.folders.plan_items`), each tuned every photo a query
(:mod:`landmark_kit.photofolder`). Every candidate of the search space is scored on both halves against the
space's starting recipe, one at a time, on its own track, with paired-bootstrap intervals. A rule decides on
one half; the other half is the truth: a *false keep* is a kept step whose gain there is below zero, a *false
rejection* a rejected step whose gain there has a 95% lower bound above zero. Both directions are counted.
Then the tuner's own coordinate search (:func:`landmark_kit.tuning.tune_recipe`) runs on each half and its
recipe is scored on the other half against the starting recipe and ``submissions/full.yaml``. Each half is
extracted once and each recipe scored once per half, for both measurements.

    python -m landmark_kit.keeprule --folder ../shared/realdev --workdir runs/keeprule
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .artifacts import atomic_write_csv, write_text
from .ensemble import EnsembleConfig, load_ensemble
from .folders import DISTRACTOR, collect, plan_items
from .intervals import Bootstrap, Estimate, format_delta, format_interval
from .predict import PredictConfig
from .ledger import machine, markdown_table
from .recipes import load_recipe, save_recipe, to_dict
from .tuning import (TRACKS, SearchSpace, Tables, apply_overrides, load_space, pooled_bootstrap, prepare,
                     score_folders, tune_folders, tune_recipe)

log = logging.getLogger(__name__)
Scores = tuple[Estimate, Estimate]
TUNER = "95% two-sided lower bound > 0 = one-sided 97.5% (the tuner's rule; every step starts off)"
WINNERS = "winners' steps start on (kept unless the 95% upper bound < 0); the rest by the tuner's rule"
# each rule: (gain on the deciding half, is it a winners' step) -> kept; a one-sided L test is the lower bound
# of the two-sided 2L-1 interval (both the (1-L) quantile of the resamples)
RULES: dict[str, Callable[[Estimate, bool], bool]] = {
    TUNER: lambda gain, winner: gain.wins(0.95),
    "90% two-sided lower bound > 0 = one-sided 95%": lambda gain, winner: gain.wins(0.90),
    "80% two-sided lower bound > 0 = one-sided 90%": lambda gain, winner: gain.wins(0.80),
    "point estimate > 0": lambda gain, winner: gain.value > 0,
    WINNERS: lambda gain, winner: gain.interval(0.95)[1] >= 0 if winner else gain.wins(0.95),
}


def halves(src: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path]:
    """Two flat photo folders of links under ``out`` (``a``, ``b``) holding different photos of ``src``: per
    landmark its first half of photos and the rest, distractors alternating."""
    plan = plan_items(collect(src)).drop_duplicates("file")
    first = (plan["split"] == "train") | ((plan["landmark"] == "") & (plan["split"] == "test"))
    folders = (Path(out) / "a", Path(out) / "b")
    for folder, rows in zip(folders, (plan[first], plan[~first])):
        folder.mkdir(parents=True, exist_ok=True)
        for file, label in zip(rows["file"], rows["landmark"]):
            link = folder / f"{label or DISTRACTOR}__{file.replace('/', '_').split('__', 1)[-1]}"
            if not link.is_symlink():
                link.symlink_to((Path(src) / file).resolve())
    return folders


@dataclass
class Half:
    """One half, prepared once: a scorer of recipes on it (GAP, mAP@100 with paired resamples), memoised so the
    one-at-a-time candidates and the coordinate search never score a recipe twice."""

    name: str
    scorer: Callable[[PredictConfig], Scores]
    queries: tuple[int, int] = (0, 0)  # recognition, retrieval queries
    memo: dict[str, Scores] = field(default_factory=dict)

    def score(self, cfg: PredictConfig) -> Scores:
        """``cfg``'s scores on this half, computed on first use."""
        key = repr(to_dict(cfg))
        if key not in self.memo:
            self.memo[key] = self.scorer(cfg)
        return self.memo[key]


def prepare_half(name: str, ensemble: EnsembleConfig, folder: Path, workdir: Path, space: SearchSpace) -> Half:
    """``folder`` extracted every photo a query under ``workdir`` (once; cached on disk) with its bootstrap."""
    folders = tune_folders([folder], workdir)
    prepare(folders[0], ensemble)
    boot: Bootstrap = pooled_bootstrap(folders, space)
    return Half(name, lambda cfg: score_folders(cfg, folders, boot), folders[0].queries)


def start_recipe(space: SearchSpace) -> PredictConfig:
    """The space's starting recipe (plain kNN when its ``base`` is empty)."""
    return apply_overrides(PredictConfig(), space.base)


def candidate_deltas(half: Half, space: SearchSpace) -> dict[tuple[str, str], Estimate]:
    """Each search-space candidate's paired gain over the space's starting recipe on its own track, on
    ``half``; candidates that change nothing are left out."""
    base = start_recipe(space)
    deltas = {}
    for option in space.options:
        for value in option.values:
            candidate = apply_overrides(base, value)
            if candidate != base:
                judged = TRACKS.index(option.track)
                deltas[(option.name, _name(value))] = half.score(candidate)[judged] - half.score(base)[judged]
    return deltas


def winners_steps(space: SearchSpace, full: PredictConfig) -> set[tuple[str, str]]:
    """The candidates that are steps of the winning solutions: every setting they change already has that
    value in ``full`` (``submissions/full.yaml``), i.e. applying them to ``full`` changes nothing."""
    return {(option.name, _name(value)) for option in space.options for value in option.values
            if apply_overrides(full, value) == full}


def _name(value: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in value.items())


def rule_table(a: dict, b: dict, winners: set | frozenset = frozenset()) -> pd.DataFrame:
    """False keeps and false rejections of each rule, deciding on one half and checked on the other (both
    directions), over the candidates scored on both; ``winners``: keys of the winners' steps."""
    rows = []
    for rule, keep in RULES.items():
        keeps = false_keeps = false_rejections = 0
        for decide, truth in ((a, b), (b, a)):
            for key in decide.keys() & truth.keys():
                kept = keep(decide[key], key in winners)
                keeps += kept
                false_keeps += kept and truth[key].value < 0
                false_rejections += (not kept) and truth[key].wins(0.95)
        rows.append({"rule (decide on one half)": rule, "kept": keeps, "false keeps": false_keeps,
                     "false rejections": false_rejections, "errors": false_keeps + false_rejections})
    return pd.DataFrame(rows)


def _changes(cfg: PredictConfig, start: PredictConfig) -> str:
    """The settings where ``cfg`` differs from ``start``, dotted (``local.max_keypoints=2000``)."""
    def flat(prefix: str, value):
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(f"{prefix}{key}.", sub).items()}
        return {prefix[:-1]: value}
    mine, theirs = flat("", to_dict(cfg)), flat("", to_dict(start))
    return ", ".join(f"{k}={v}" for k, v in mine.items() if theirs.get(k) != v) or "(none)"


def tuned_recipe(half: Half, space: SearchSpace, workdir: Path) -> PredictConfig:
    """The tuner's coordinate search (:func:`tune_recipe`, the tuner's keep rule) on ``half``; its table and
    recipe written under ``workdir/<half>/tuning/`` and ``workdir/tuned-on-<half>.yaml``."""
    table = Tables(space.level)
    recipe = tune_recipe(None, None, None, space, table, score=half.score)
    atomic_write_csv(table.frame(), workdir / half.name / "tuning" / "recipe.csv")
    write_text(workdir / half.name / "tuning" / "recipe.md", table.markdown())
    save_recipe(recipe, workdir / f"tuned-on-{half.name}.yaml")
    return recipe


def transfer_table(a: Half, b: Half, space: SearchSpace, full: PredictConfig, workdir: Path) -> pd.DataFrame:
    """The whole tuned choice, both directions: tuned on one half, scored on the other against the starting
    recipe and ``full``, paired 95% intervals on both tracks."""
    start = start_recipe(space)
    rows = []
    for tune_on, score_on in ((a, b), (b, a)):
        recipe = tuned_recipe(tune_on, space, workdir)
        (gap, mp), (s_gap, s_mp), (f_gap, f_mp) = (score_on.score(c) for c in (recipe, start, full))
        rows.append({"tuned on": f"half {tune_on.name}", "scored on": f"half {score_on.name}",
                     "tuned recipe (changes from the start)": _changes(recipe, start),
                     "GAP": format_interval(gap), "mAP@100": format_interval(mp),
                     "delta GAP vs start": format_delta(gap - s_gap), "delta mAP@100 vs start": format_delta(mp - s_mp),
                     "delta GAP vs full.yaml": format_delta(gap - f_gap),
                     "delta mAP@100 vs full.yaml": format_delta(mp - f_mp)})
    return pd.DataFrame(rows)


def _write(frame: pd.DataFrame, workdir: Path, name: str, header: str) -> Path:
    atomic_write_csv(frame, workdir / f"{name}.csv")
    return write_text(workdir / f"{name}.md", header + markdown_table(frame.to_dict("records")))


def measure(folder, workdir, ensemble: EnsembleConfig, space: SearchSpace, full: PredictConfig) -> Path:
    """Both halves scored; the rule, candidate and whole-choice tables written to ``workdir/keeprule.md``,
    ``candidates.md`` and ``transfer.md`` (and ``.csv``)."""
    workdir = Path(workdir)
    a_dir, b_dir = halves(folder, workdir / "halves")
    a, b = (prepare_half(name, ensemble, d, workdir / name, space) for name, d in (("a", a_dir), ("b", b_dir)))
    da, db = candidate_deltas(a, space), candidate_deltas(b, space)
    winners = winners_steps(space, full)
    candidates = pd.DataFrame([{"option": o, "candidate": c, "winners' step": "yes" if (o, c) in winners else "",
                                "gain on half a": format_delta(da[(o, c)]), "gain on half b": format_delta(db[(o, c)])}
                               for o, c in da if (o, c) in db])
    halves_are = (f"`{folder}` cut into two halves of different photos (a: {a.queries[0]} recognition, "
                  f"{a.queries[1]} retrieval queries; b: {b.queries[0]}, {b.queries[1]}), each tuned every photo "
                  f"a query; {space.resamples} paired-bootstrap resamples; measured on {machine()}.")
    n_winners = int((candidates["winners' step"] == "yes").sum())
    header = (f"{halves_are} Every candidate of the search space against its starting recipe, one at a time "
              f"({len(candidates)} that change something, {n_winners} of them winners' steps: every setting "
              f"they change has its full.yaml value); a false keep is kept on one half "
              f"and below zero on the other, a false rejection rejected on one half with a 95% lower bound above "
              f"zero on the other (both directions).\n\n")
    _write(candidates, workdir, "candidates", header)
    _write(transfer_table(a, b, space, full, workdir), workdir, "transfer",
           f"{halves_are} The tuner's coordinate search (its 95% rule) run on one half, its recipe scored on "
           f"the other against the starting recipe and full.yaml; deltas with paired 95% intervals.\n\n")
    return _write(rule_table(da, db, winners), workdir, "keeprule", header)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, help="labelled photo folder (either layout of from-folders)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--ensemble", default="ensembles/zero-shot.yaml")
    ap.add_argument("--search", default="submissions/search.yaml")
    ap.add_argument("--winners", default="submissions/full.yaml", help="recipe holding the winners' steps")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    table = measure(args.folder, args.workdir, load_ensemble(args.ensemble), load_space(args.search),
                    load_recipe(PredictConfig, args.winners))
    print(table.read_text())
    print((Path(args.workdir) / "transfer.md").read_text())


if __name__ == "__main__":
    main()
