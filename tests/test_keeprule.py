"""The keep rule measured by transfer: halves of different photos, and false keeps / rejections counted on
constructed gains."""

from __future__ import annotations

import numpy as np
from PIL import Image

from landmark_kit.intervals import Estimate
from landmark_kit.keeprule import halves, rule_table


def _gain(centre: float, spread: float) -> Estimate:
    return Estimate(centre, centre + spread * np.linspace(-1, 1, 1001))


def test_rules_are_judged_on_the_other_half():
    a = {("x", "clear"): _gain(0.05, 0.02),  # wins clearly on both halves
         ("x", "noise"): _gain(0.01, 0.05),  # positive on a but noise, hurts on b
         ("x", "missed"): _gain(0.02, 0.03)}  # holds zero on a, clearly helps on b
    b = {("x", "clear"): _gain(0.04, 0.02), ("x", "noise"): _gain(-0.02, 0.05), ("x", "missed"): _gain(0.05, 0.02)}
    table = rule_table(a, b).set_index("rule (decide on one half)")
    strict, loose = table.loc["95% lower bound > 0"], table.loc["point estimate > 0"]
    # strict: keeps "clear" both ways and "missed" from b; rejects "missed" on a although b shows it clearly
    assert (strict["kept"], strict["false keeps"], strict["false rejections"]) == (3, 0, 1)
    # loose: keeps everything positive, so "noise" kept on a hurts on b
    assert (loose["kept"], loose["false keeps"], loose["false rejections"]) == (5, 1, 0)


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
