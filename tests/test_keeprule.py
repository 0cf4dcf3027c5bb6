"""The keep rule measured by transfer: halves of different photos, and false keeps / rejections counted on
constructed gains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from landmark_kit import keeprule
from landmark_kit.intervals import Estimate
from landmark_kit.keeprule import RULES, TUNER, WINNERS, Half, halves, measure, rule_table, winners_steps
from landmark_kit.predict import PredictConfig
from landmark_kit.recipes import load_recipe
from landmark_kit.tuning import SearchOption, SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[1]


def _gain(centre: float, spread: float) -> Estimate:
    return Estimate(centre, centre + spread * np.linspace(-1, 1, 1001))


def test_rules_are_judged_on_the_other_half():
    a = {("x", "clear"): _gain(0.05, 0.02),  # wins clearly on both halves
         ("x", "noise"): _gain(0.01, 0.05),  # positive on a but noise, hurts on b
         ("x", "missed"): _gain(0.02, 0.03)}  # holds zero on a, clearly helps on b
    b = {("x", "clear"): _gain(0.04, 0.02), ("x", "noise"): _gain(-0.02, 0.05), ("x", "missed"): _gain(0.05, 0.02)}
    table = rule_table(a, b).set_index("rule (decide on one half)")
    strict, loose = table.loc[TUNER], table.loc["point estimate > 0"]
    # strict: keeps "clear" both ways and "missed" from b; rejects "missed" on a although b shows it clearly
    assert (strict["kept"], strict["false keeps"], strict["false rejections"]) == (3, 0, 1)
    # loose: keeps everything positive, so "noise" kept on a hurts on b
    assert (loose["kept"], loose["false keeps"], loose["false rejections"]) == (5, 1, 0)


def test_one_sided_rules_say_so_and_take_the_one_sided_quantile():
    labels = [rule for rule in RULES if "two-sided" in rule]
    assert len(labels) == 3 and all("one-sided" in rule for rule in labels)
    # lower 2.5% quantile below zero, lower 5% quantile above: one-sided 95% keeps, the tuner's rule does not
    gain = Estimate(0.046, np.linspace(-0.004, 0.096, 1001))
    assert np.quantile(gain.samples, 0.025) < 0 < np.quantile(gain.samples, 0.05)
    assert not RULES[TUNER](gain, False)
    assert RULES["90% two-sided lower bound > 0 = one-sided 95%"](gain, False)


def test_winners_steps_start_on_unless_shown_harmful():
    holds_zero, harmful = _gain(-0.01, 0.03), _gain(-0.05, 0.02)
    rule = RULES[WINNERS]
    assert rule(holds_zero, True) and not rule(harmful, True)
    assert not rule(holds_zero, False)  # any other step still needs its 95% lower bound above zero
    assert rule(_gain(0.05, 0.02), False)
    a = {("x", "on"): holds_zero, ("x", "off"): holds_zero, ("x", "bad"): harmful}
    b = {("x", "on"): _gain(-0.02, 0.05), ("x", "off"): _gain(0.05, 0.02), ("x", "bad"): _gain(0.05, 0.02)}
    table = rule_table(a, b, winners={("x", "on"), ("x", "bad")}).set_index("rule (decide on one half)")
    row = table.loc[WINNERS]
    # "on" kept on both halves, below zero on the other each time (2 false keeps); "off" (not a winners' step)
    # and "bad" (shown harmful on a) rejected on a although b shows them (2 false rejections), kept on b and
    # below zero on a (2 false keeps)
    assert (row["kept"], row["false keeps"], row["false rejections"]) == (4, 4, 2)
    tuner = table.loc[TUNER]  # the same, except that "on" needs evidence: never kept
    assert (tuner["kept"], tuner["false keeps"], tuner["false rejections"]) == (2, 2, 2)


def test_winners_steps_are_the_full_recipes_settings():
    steps = winners_steps(load_space(ROOT / "submissions" / "search.yaml"),
                          load_recipe(PredictConfig, ROOT / "submissions" / "full.yaml"))
    assert {("soft-voting k", "k=3"), ("verification shortlist", "verify_shortlist=20"),
            ("DBA / QE", "dba_k=2, qe_k=2"), ("label re-ranking", "rerank=True, append_positives=True")} <= steps
    assert not {("soft-voting k", "k=5"), ("local re-ranking score", "local_rerank=20, local_fusion=0.1"),
                ("label re-ranking", "rerank=True, append_positives=False"), ("keypoints", "local.max_keypoints=2000"),
                ("non-landmark penalty", "nonlandmark_pool=index, nonlandmark_k=3")} & steps


def _fake_half(name: str, gap_for_k: dict, map_for_dba: float) -> Half:
    noise = np.random.default_rng(0).normal(0, 0.01, 200)  # shared by every recipe: paired differences

    def score(cfg: PredictConfig):
        gap = 0.5 + gap_for_k.get(cfg.k, 0.0)
        mp = 0.4 + map_for_dba * (cfg.dba_k == 2)
        return Estimate(gap, gap + noise), Estimate(mp, mp + noise)
    return Half(name, score, (30, 20))


def test_transfer_table_tunes_on_each_half_and_scores_on_the_other(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("arch__1.jpg", "arch__2.jpg", "dome__1.jpg", "dome__2.jpg"):
        Image.new("RGB", (8, 8)).save(src / name)
    fakes = {"a": _fake_half("a", {3: 0.1}, 0.05), "b": _fake_half("b", {3: -0.05}, 0.02)}
    monkeypatch.setattr(keeprule, "prepare_half", lambda name, *_: fakes[name])
    space = SearchSpace(options=[SearchOption("soft-voting k", "recognition", [{"k": 3}, {"k": 5}]),
                                 SearchOption("DBA / QE", "retrieval", [{"dba_k": 2}])], resamples=200)
    full = PredictConfig(k=3, dba_k=2, qe_k=2)
    measure(src, tmp_path / "w", None, space, full)
    frame = pd.read_csv(tmp_path / "w" / "transfer.csv")
    assert list(frame.columns) == ["tuned on", "scored on", "tuned recipe (changes from the start)", "GAP", "mAP@100",
                                   "delta GAP vs start", "delta mAP@100 vs start", "delta GAP vs full.yaml",
                                   "delta mAP@100 vs full.yaml"]
    a_to_b, b_to_a = frame.to_dict("records")
    assert (a_to_b["tuned on"], a_to_b["scored on"], b_to_a["tuned on"], b_to_a["scored on"]) == (
        "half a", "half b", "half b", "half a")
    # tuned on a: k=3 and dba_k=2 kept; on b, k=3 costs 0.05 GAP, dba_k=2 gains 0.02 mAP@100
    assert a_to_b["tuned recipe (changes from the start)"] == "k=3, dba_k=2"
    assert a_to_b["delta GAP vs start"].startswith("-0.0500") and a_to_b["delta mAP@100 vs start"].startswith("+0.0200")
    assert a_to_b["delta GAP vs full.yaml"].startswith("+0.0000")
    # tuned on b: only dba_k=2; on a it misses the 0.1 GAP that full.yaml's k=3 gets
    assert b_to_a["tuned recipe (changes from the start)"] == "dba_k=2"
    assert b_to_a["delta GAP vs full.yaml"].startswith("-0.1000") and b_to_a["delta mAP@100 vs start"].startswith("+0.05")
    md = (tmp_path / "w" / "transfer.md").read_text()
    assert "half a" in md and "1 recognition" not in md and "30 recognition" in md and "200 paired" in md
    assert "cores usable" in md and md.count("\n| half ") == 2
    assert (tmp_path / "w" / "a" / "tuning" / "recipe.md").exists() and (tmp_path / "w" / "tuned-on-b.yaml").exists()
    candidates = pd.read_csv(tmp_path / "w" / "candidates.csv", keep_default_na=False)
    assert candidates.set_index("candidate")["winners' step"].to_dict() == {"k=3": "yes", "k=5": "", "dba_k=2": "yes"}
    assert WINNERS in (tmp_path / "w" / "keeprule.md").read_text()


def test_halves_hold_different_photos_of_every_landmark(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("arch__1.jpg", "arch__2.jpg", "arch__3.jpg", "dome__1.jpg", "dome__2.jpg", "distractor__1.jpg",
                 "distractor__2.jpg"):
        Image.new("RGB", (8, 8)).save(src / name)
    a, b = halves(src, tmp_path / "h")
    names_a, names_b = {p.name for p in a.iterdir()}, {p.name for p in b.iterdir()}
    assert not names_a & names_b and names_a | names_b == {p.name for p in src.iterdir()}
    assert {n.split("__")[0] for n in names_a} == {n.split("__")[0] for n in names_b} == {"arch", "dome",
                                                                                           "distractor"}
