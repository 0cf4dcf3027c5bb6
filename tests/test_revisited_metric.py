"""Revisited Oxford / Paris: ground truth readers (.pkl restricted, .mat 1-based), ranks.csv, the
Easy / Medium / Hard protocol against hand-computed values and a transcription of the benchmark's own loop."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from landmark_kit.data import DataError
from landmark_kit.revisited_metric import (
    PROTOCOLS,
    GroundTruth,
    evaluate,
    evaluate_indices,
    format_report,
    read_ground_truth,
    read_ranks,
    write_ground_truth,
)

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 5, 10)

# The team's contract case: q0 has one easy, one hard and one junk image; q1 no easy image (skipped in Easy).
CONTRACT = {"imlist": [f"db{i}" for i in range(6)], "qimlist": ["q0", "q1"],
            "gnd": [{"bbx": [0, 0, 9, 9], "easy": [0], "hard": [1], "junk": [2]},
                    {"bbx": [0, 0, 9, 9], "easy": [], "hard": [3, 4], "junk": []}]}
CONTRACT_RANKS = "id,images\nq0,db2 db0 db5 db1\nq1,db4 db0 db3\n"

# Junk before and between positives: q0's full ranking d2 d1 d3 d7 d4 d0 d6 d5 d8 d9 (junk d2, d7; easy d1, d4;
# hard d6); q1 (no easy image, junk d0 first, then its hard image d3).
CASE = {"imlist": [f"d{i}" for i in range(10)], "qimlist": ["q0", "q1"],
        "gnd": [{"bbx": [1.5, 2.0, 30.0, 40.5], "easy": [1, 4], "hard": [6], "junk": [2, 7]},
                {"bbx": [0.0, 0.0, 5.0, 5.0], "easy": [], "hard": [3], "junk": [0]}]}
FULL = np.array([[2, 1, 3, 7, 4, 0, 6, 5, 8, 9], [0, 3, 1, 2, 4, 5, 6, 7, 8, 9]])


# --- a straight transcription of revisitop's python/evaluate.py and example_evaluate.py (the reference) ---

def _official_compute_ap(ranks, nres):
    ap = 0
    recall_step = 1.0 / nres
    for j in np.arange(len(ranks)):
        rank = ranks[j]
        precision_0 = 1.0 if rank == 0 else float(j) / rank
        precision_1 = float(j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * recall_step / 2.0
    return ap


def _official_compute_map(ranks, gnd, kappas=()):
    """ranks: (db_size, n_queries), as the benchmark's code takes them."""
    mean_ap, nq, nempty = 0.0, len(gnd), 0
    pr = np.zeros(len(kappas))
    for i in np.arange(nq):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            nempty += 1
            continue
        qgndj = np.array(gnd[i]["junk"])
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = 0
        ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        mean_ap += _official_compute_ap(pos, len(qgnd))
        pos += 1
        prs = np.zeros(len(kappas))
        for j in np.arange(len(kappas)):
            kq = min(max(pos), kappas[j])
            prs[j] = (pos <= kq).sum() / kq
        pr = pr + prs
    return mean_ap / (nq - nempty), pr / (nq - nempty)


def _official_revisited(gnd, ranks, kappas=KS):
    setups = {"easy": lambda g: (g["easy"], [g["junk"], g["hard"]]),
              "medium": lambda g: (np.concatenate([g["easy"], g["hard"]]), [g["junk"]]),
              "hard": lambda g: (g["hard"], [g["junk"], g["easy"]])}
    out = {}
    for name, setup in setups.items():
        gnd_t = [{"ok": np.concatenate([setup(g)[0]]), "junk": np.concatenate(setup(g)[1])} for g in gnd]
        mean_ap, pr = _official_compute_map(ranks, gnd_t, kappas)
        out[name] = {"map": mean_ap, **{f"mp@{k}": p for k, p in zip(kappas, pr)}}
    return out


# --- helpers ---

def _gt(raw: dict, name: str = "gnd_test.pkl") -> GroundTruth:
    gnd = [{"bbx": tuple(map(float, g["bbx"])), **{k: np.asarray(g[k], np.int64) for k in ("easy", "hard", "junk")}}
           for g in raw["gnd"]]
    return GroundTruth(Path(name), list(raw["imlist"]), list(raw["qimlist"]), gnd)


def _write_pkl(path: Path, raw: dict, protocol: int = 2) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(raw, fh, protocol=protocol)
    return path


def _write_official_mat(path: Path, raw: dict) -> Path:
    """The layout of the benchmark's gnd_*.mat: cell arrays of names, a 1 x nq struct array, 1-based rows."""
    gnd = np.zeros((1, len(raw["gnd"])), dtype=[(f, "O") for f in ("bbx", "easy", "hard", "junk")])
    for i, g in enumerate(raw["gnd"]):
        gnd[0, i]["bbx"] = np.asarray(g["bbx"], float)[None, :]
        for f in ("easy", "hard", "junk"):
            gnd[0, i][f] = (np.asarray(g[f], float) + 1)[None, :] if len(g[f]) else np.zeros((0, 0))
    cells = lambda names: np.array(list(names), dtype=object).reshape(-1, 1)  # noqa: E731
    scipy.io.savemat(path, {"imlist": cells(raw["imlist"]), "qimlist": cells(raw["qimlist"]), "gnd": gnd})
    return path


def _close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for protocol in want:
        assert set(got[protocol]) == set(want[protocol])
        for key, value in want[protocol].items():
            assert got[protocol][key] == pytest.approx(value, abs=1e-12), (protocol, key)


def _names(ranks: np.ndarray, raw: dict) -> dict[str, list[str]]:
    return {q: [raw["imlist"][i] for i in row] for q, row in zip(raw["qimlist"], ranks)}


# --- the protocol, hand-computed ---

def test_protocol_sets():
    gt = _gt(CASE)
    sets = {p: tuple(sorted(map(int, s)) for s in gt.protocol(0, p)) for p in PROTOCOLS}
    assert sets == {"easy": ([1, 4], [2, 6, 7]), "medium": ([1, 4, 6], [2, 7]), "hard": ([6], [1, 2, 4, 7])}
    assert [len(s) for s in gt.protocol(1, "easy")] == [0, 2]
    with pytest.raises(ValueError, match="unknown protocol"):
        gt.protocol(0, "extreme")


def test_contract_case_by_hand():
    """q0 (db2 db0 db5 db1): Easy: junk db2 (and hard db1) removed, db0 first: AP 1. Medium: positives at
    1 and 3 -> 0 and 2 after junk: AP (1 + (1/2 + 2/3) / 2) / 2 = 19/24, P@5 = 2/min(3, 5). Hard: db1 at 3 -> 1
    after 2 junk: AP (0 + 1/2) / 2 = 1/4, P@1 = 0/1, P@5 = 1/min(2, 5). q1 (db4 db0 db3, hard 3 and 4): like
    q0 Medium; it has no easy image, so Easy averages q0 alone."""
    want = {"easy": {"map": 1.0, "mp@1": 1.0, "mp@5": 1.0, "mp@10": 1.0},
            "medium": {"map": 19 / 24, "mp@1": 1.0, "mp@5": 2 / 3, "mp@10": 2 / 3},
            "hard": {"map": (1 / 4 + 19 / 24) / 2, "mp@1": 1 / 2, "mp@5": (1 / 2 + 2 / 3) / 2,
                     "mp@10": (1 / 2 + 2 / 3) / 2}}
    gt = _gt(CONTRACT)
    _close(evaluate(gt, {"q0": ["db2", "db0", "db5", "db1"], "q1": ["db4", "db0", "db3"]}), want)


def test_junk_before_and_between_positives_full_ranking():
    """q0 Medium: positives at 1, 4, 6 with junk at 0 and 3 -> 0, 2, 4: AP = (1 + 7/12 + (1/2 + 3/5)/2) / 3
    = 32/45; mP@10 = 3 / min(5, 10) (the min(max(pos), k) cut-off, not 3/10). Easy (d6 is junk too): 0, 2:
    AP 19/24, P@5 = P@10 = 2/3. Hard (d1, d4 junk too): d6 at 6 - 4 = 2: AP (0 + 1/3) / 2 = 1/6, P@1 0, P@5 1/3.
    q1: its junk d0 first, then d3: AP 1, every P@k 1 (Medium, Hard); no easy image, so not in Easy."""
    want = {"easy": {"map": 19 / 24, "mp@1": 1.0, "mp@5": 2 / 3, "mp@10": 2 / 3},
            "medium": {"map": (32 / 45 + 1) / 2, "mp@1": 1.0, "mp@5": (3 / 5 + 1) / 2, "mp@10": (3 / 5 + 1) / 2},
            "hard": {"map": (1 / 6 + 1) / 2, "mp@1": 1 / 2, "mp@5": (1 / 3 + 1) / 2, "mp@10": (1 / 3 + 1) / 2}}
    gt = _gt(CASE)
    _close(evaluate_indices(gt, FULL), want)
    _close(evaluate(gt, _names(FULL, CASE)), want)
    _close(_official_revisited(gt.gnd, FULL.T.copy()), want)


def test_positives_beyond_the_listed_top_n():
    """Top-5 (d2 d1 d3 d7 d4): d6 is not listed. Medium: AP (1 + 7/12) / 3 = 19/36 (still over 3 positives);
    with a positive missing, mP@k cuts at k itself: P@5 = 2/5, P@10 = 2/10. Easy lists both positives: as the
    full ranking. Hard's only positive is missing: AP 0, every P@k 0."""
    top5 = FULL[:, :5]
    want = {"easy": {"map": 19 / 24, "mp@1": 1.0, "mp@5": 2 / 3, "mp@10": 2 / 3},
            "medium": {"map": (19 / 36 + 1) / 2, "mp@1": 1.0, "mp@5": (2 / 5 + 1) / 2, "mp@10": (2 / 10 + 1) / 2},
            "hard": {"map": 1 / 2, "mp@1": 1 / 2, "mp@5": 1 / 2, "mp@10": 1 / 2}}
    gt = _gt(CASE)
    _close(evaluate_indices(gt, top5), want)
    _close(evaluate(gt, _names(top5, CASE)), want)


def test_mp_at_k_stops_at_the_last_positive():
    """Two positives ranked first and second: P@5 = 2 / min(2, 5) = 1 (the benchmark's definition), not 2/5;
    P@1 = 1/1. With the second one at 7th place: P@5 = 1/5, P@10 = 2 / min(7, 10)."""
    raw = {"imlist": [f"d{i}" for i in range(10)], "qimlist": ["q"],
           "gnd": [{"bbx": [0, 0, 1, 1], "easy": [0, 1], "hard": [], "junk": []}]}
    gt = _gt(raw)
    scores = evaluate_indices(gt, np.arange(10)[None, :])["easy"]
    assert (scores["mp@1"], scores["mp@5"], scores["mp@10"]) == (1.0, 1.0, 1.0)
    late = np.array([[0, 2, 3, 4, 5, 6, 1, 7, 8, 9]])
    scores = evaluate_indices(gt, late)["easy"]
    assert scores["mp@5"] == pytest.approx(1 / 5) and scores["mp@10"] == pytest.approx(2 / 7)
    assert scores["map"] == pytest.approx((1 + (1 / 6 + 2 / 7) / 2) / 2)
    assert evaluate_indices(gt, late, kappas=(3, 7))["easy"] == pytest.approx(
        {"map": scores["map"], "mp@3": 1 / 3, "mp@7": 2 / 7})


def test_a_protocol_without_positives_scores_nan_and_reports_na():
    raw = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [], "hard": [0], "junk": []}]}
    scores = evaluate_indices(_gt(raw), np.array([[1, 0]]))
    assert np.isnan(scores["easy"]["map"]) and scores["hard"]["map"] == pytest.approx(1 / 4)
    assert "n/a" in format_report(scores).splitlines()[1]


def test_matches_the_benchmark_code_on_random_rankings():
    """Full rankings: equal to the benchmark's loop. Top-N: AP equal to that loop on the cut ranking (it sums
    over the listed positives only); mP@k (k <= listed non-junk) equal to it with the unlisted positives last."""
    rng = np.random.default_rng(25)
    for trial in range(25):
        n_db, n_q = int(rng.integers(30, 80)), int(rng.integers(1, 9))
        gnd = []
        for _ in range(n_q):
            perm = rng.permutation(n_db)
            sizes = rng.integers(0, 6, size=3)
            cuts = np.cumsum(sizes)
            easy, hard, junk = perm[:cuts[0]], perm[cuts[0]:cuts[1]], perm[cuts[1]:cuts[2]]
            gnd.append({"bbx": (0.0, 0.0, 1.0, 1.0), "easy": easy, "hard": hard, "junk": junk})
        if not any(len(g["hard"]) for g in gnd) or not any(len(g["easy"]) for g in gnd):
            continue
        gt = GroundTruth(Path("gnd_random.pkl"), [f"d{i}" for i in range(n_db)], [f"q{i}" for i in range(n_q)], gnd)
        ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)])
        _close(evaluate_indices(gt, ranks), _official_revisited(gnd, ranks.T.copy()))
        top = ranks[:, :20]
        got = evaluate_indices(gt, top)
        official_ap = _official_revisited(gnd, top.T.copy(), kappas=())
        for protocol in PROTOCOLS:
            assert got[protocol]["map"] == pytest.approx(official_ap[protocol]["map"], abs=1e-12)
            completed = []
            for i, row in enumerate(top):
                positives = gt.protocol(i, protocol)[0]
                rest = np.setdiff1d(np.arange(n_db), row)
                completed.append(np.concatenate([row, rest[~np.isin(rest, positives)], rest[np.isin(rest, positives)]]))
            official = _official_revisited(gnd, np.stack(completed).T.copy())[protocol]
            for k in KS:
                assert got[protocol][f"mp@{k}"] == pytest.approx(official[f"mp@{k}"], abs=1e-12)


def test_evaluate_refuses_incomplete_or_foreign_rankings():
    gt = _gt(CONTRACT)
    with pytest.raises(DataError, match="query 'q1' of gnd_test.pkl has no ranking"):
        evaluate(gt, {"q0": ["db0"]})
    with pytest.raises(DataError, match="'q9' is not a query"):
        evaluate(gt, {"q0": [], "q1": [], "q9": []})
    with pytest.raises(DataError, match="'nope' is not a database image"):
        evaluate(gt, {"q0": ["db0", "nope"], "q1": []})
    with pytest.raises(DataError, match="'db0' is ranked twice"):
        evaluate(gt, {"q0": ["db0", "db1", "db0"], "q1": []})
    with pytest.raises(ValueError, match="n_queries=2"):
        evaluate_indices(gt, np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="twice for query 1"):
        evaluate_indices(gt, np.array([[0, 1], [2, 2]]))
    with pytest.raises(ValueError, match="must index imlist"):
        evaluate_indices(gt, np.array([[0, 6], [1, 2]]))


# --- ground truth readers ---

def _same(a: GroundTruth, b: GroundTruth) -> None:
    assert (a.imlist, a.qimlist) == (b.imlist, b.qimlist)
    for ga, gb in zip(a.gnd, b.gnd, strict=True):
        assert ga["bbx"] == gb["bbx"]
        for key in ("easy", "hard", "junk"):
            assert ga[key].dtype == np.int64 and gb[key].dtype == np.int64
            np.testing.assert_array_equal(ga[key], gb[key])


def test_pkl_and_official_mat_give_the_same_ground_truth(tmp_path):
    from_pkl = read_ground_truth(_write_pkl(tmp_path / "gnd_case.pkl", CASE))
    from_mat = read_ground_truth(_write_official_mat(tmp_path / "gnd_case.mat", CASE))
    _same(from_pkl, _gt(CASE))
    _same(from_mat, from_pkl)  # the .mat holds 1-based rows: d1 is 2 there, 1 here
    assert from_pkl.gnd[0]["bbx"] == (1.5, 2.0, 30.0, 40.5) and from_mat.path.name == "gnd_case.mat"
    assert scipy.io.loadmat(tmp_path / "gnd_case.mat")["gnd"][0, 0]["easy"].tolist() == [[2.0, 5.0]]
    numpy_raw = {**CASE, "gnd": [{k: np.asarray(v) for k, v in g.items()} for g in CASE["gnd"]]}
    for protocol in (2, 5):  # numpy arrays, pickled as numpy 2 does (protocol 2: _codecs.encode; 5: buffers)
        _same(read_ground_truth(_write_pkl(tmp_path / f"gnd_np{protocol}.pkl", numpy_raw, protocol)), from_pkl)
    plain = {**CASE, "gnd": [{**g, **{k: [i + 1 for i in g[k]] for k in ("easy", "hard", "junk")}}
                             for g in CASE["gnd"]]}
    scipy.io.savemat(tmp_path / "gnd_plain.mat", plain)  # savemat's own layout: char matrix, cell of structs
    _same(read_ground_truth(tmp_path / "gnd_plain.mat"), from_pkl)


def _set(key, value):
    """A change to CONTRACT: top-level ``key``, or ``gnd1.<field>`` of query q1; None deletes it."""
    def change(raw):
        where, field = (raw["gnd"][1], key[5:]) if key.startswith("gnd1.") else (raw, key)
        if value is None:
            del where[field]
        else:
            where[field] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set("gnd", None), r"gnd_broken.pkl: no gnd"),
    (_set("gnd1.junk", None), r"gnd_broken.pkl: gnd\[1\] \(query q1\): no junk"),
    (_set("gnd1.hard", [3, 6]), r"gnd\[1\] \(query q1\): hard index 6 out of range \(0-based, imlist has 6"),
    (_set("gnd1.easy", [-1]), r"easy index -1 out of range"),
    (_set("gnd1.easy", ["3"]), r"easy must be a list of integers"),
    (_set("gnd1.easy", [1.5]), r"easy must be a list of integers"),
    (_set("gnd1.bbx", [0, 0, 9]), r"bbx must be \[x1, y1, x2, y2\]"),
    (_set("qimlist", ["q0"]), r"one entry per query \(1\), found 2"),
    (_set("imlist", ["a", "b", "a", "c", "d", "e"]), r"imlist lists 'a' twice"),
    (_set("imlist", "db0 db1"), r"imlist must be a list of names"),
])
def test_malformed_pickles_are_named(tmp_path, change, message):
    raw = {**CONTRACT, "gnd": [dict(g) for g in CONTRACT["gnd"]]}
    change(raw)
    with pytest.raises(DataError, match=message):
        read_ground_truth(_write_pkl(tmp_path / "gnd_broken.pkl", raw))


def test_unreadable_or_foreign_files_are_named(tmp_path):
    (tmp_path / "gnd_junk.pkl").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(DataError, match="gnd_junk.pkl: not a readable ground-truth pickle"):
        read_ground_truth(tmp_path / "gnd_junk.pkl")
    _write_pkl(tmp_path / "gnd_path.pkl", {**CONTRACT, "imlist": [Path("db0")]})
    with pytest.raises(DataError, match=r"gnd_path.pkl: refused global pathlib"):
        read_ground_truth(tmp_path / "gnd_path.pkl")
    _write_pkl(tmp_path / "gnd_list.pkl", [CONTRACT])
    with pytest.raises(DataError, match="expected a dict"):
        read_ground_truth(tmp_path / "gnd_list.pkl")
    (tmp_path / "gnd_junk.mat").write_bytes(b"MATLAB? no" * 20)
    with pytest.raises(DataError, match="gnd_junk.mat: not a readable .mat"):
        read_ground_truth(tmp_path / "gnd_junk.mat")
    scipy.io.savemat(tmp_path / "gnd_noq.mat", {"imlist": np.array(["a"], dtype=object), "gnd": np.zeros(1)})
    with pytest.raises(DataError, match="gnd_noq.mat: no qimlist"):
        read_ground_truth(tmp_path / "gnd_noq.mat")
    zero_based = {**CONTRACT, "gnd": [dict(g) for g in CONTRACT["gnd"]]}
    _write_official_mat(tmp_path / "gnd_zero.mat", zero_based)
    raw = scipy.io.loadmat(tmp_path / "gnd_zero.mat")
    raw["gnd"][0, 0]["easy"] = np.array([[0.0]])  # a 0-based index written into the 1-based .mat
    scipy.io.savemat(tmp_path / "gnd_zero.mat", {k: raw[k] for k in ("imlist", "qimlist", "gnd")})
    with pytest.raises(DataError, match=r"gnd_zero.mat: gnd\[0\] \(query q0\): easy index 0 out of range \(1-based"):
        read_ground_truth(tmp_path / "gnd_zero.mat")
    with pytest.raises(DataError, match="file not found"):
        read_ground_truth(tmp_path / "gnd_missing.pkl")
    with pytest.raises(DataError, match="expected a .pkl or .mat"):
        read_ground_truth(tmp_path / "gnd.json")


# --- ranks.csv ---

@pytest.mark.parametrize("text, message", [
    ("id,ranks\nq0,db0\nq1,db1\n", r"header must be id,images"),
    ("id,images\nq0,db0\nq7,db1\n", r"ranks.csv, line 3: query 'q7' is not a query of gnd_test.pkl"),
    ("id,images\nq0,db0\nq0,db1\n", r"ranks.csv, line 3: query q0 is repeated \(first on line 2\)"),
    ("id,images\nq0,db0 dbX\nq1,db1\n", r"line 2 \(query q0\): 'dbX' at position 2 is not a database image"),
    ("id,images\nq0,db0 db1 db0\nq1,db1\n", r"line 2 \(query q0\): 'db0' is ranked twice \(positions 1 and 3\)"),
    ("id,images\nq0,db0  db1\nq1,db1\n", r"line 2 \(query q0\): empty name at position 2"),
    ("id,images\nq0,db0,db1\nq1,db1\n", r"line 2: expected 2 fields, found 3"),
    ("id,images\n,db0\nq1,db1\n", r"line 2: images 'db0' without a query id"),
    ("id,images\nq1,db1\n", r"ranks.csv: query 'q0' of gnd_test.pkl has no row \(1 of 2 missing\)"),
])
def test_bad_ranks_are_named(tmp_path, text, message):
    (tmp_path / "ranks.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_ranks(tmp_path / "ranks.csv", _gt(CONTRACT))


def test_read_ranks_keeps_order_empty_rows_and_a_trailing_space(tmp_path):
    (tmp_path / "ranks.csv").write_text("\ufeffid,images\nq1,db4 db0 db3 \n\nq0,\n")
    assert read_ranks(tmp_path / "ranks.csv", _gt(CONTRACT)) == {"q1": ["db4", "db0", "db3"], "q0": []}
    with pytest.raises(DataError, match="file not found"):
        read_ranks(tmp_path / "none.csv", _gt(CONTRACT))


# --- stage 05 ---

def _stage(*args):
    return subprocess.run([sys.executable, str(ROOT / "stages" / "05_score.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_json_text_and_a_bad_row(tmp_path):
    pkl = _write_pkl(tmp_path / "gnd_roxford5k.pkl", CONTRACT)
    (tmp_path / "ranks.csv").write_text(CONTRACT_RANKS)
    run = _stage("--solution", pkl, "--submission", tmp_path / "ranks.csv", "--json")
    assert run.returncode == 0, run.stderr
    scores = json.loads(run.stdout)
    assert list(scores) == ["easy", "medium", "hard"]
    assert all(list(row) == ["map", "mp@1", "mp@5", "mp@10"] for row in scores.values())
    assert scores["medium"]["map"] == pytest.approx(19 / 24) and scores["hard"]["mp@1"] == pytest.approx(0.5)
    mat = _write_official_mat(tmp_path / "gnd_roxford5k.mat", CONTRACT)
    run = _stage("--solution", mat, "--submission", tmp_path / "ranks.csv")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"gnd_roxford5k.mat: {tmp_path / 'ranks.csv'}"
    assert lines[1].split() == ["protocol", "mAP", "mP@1", "mP@5", "mP@10"]
    assert lines[3].split() == ["medium", "79.17", "100.00", "66.67", "66.67"]
    (tmp_path / "bad.csv").write_text("id,images\nq0,db2 db0\nq1,db4 db0 db4\n")
    run = _stage("--solution", pkl, "--submission", tmp_path / "bad.csv", "--json")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [f"error: {tmp_path / 'bad.csv'}, line 3 (query q1): 'db4' is ranked twice "
                                       "(positions 1 and 3)"]


def test_write_ground_truth_round_trips_both_formats(tmp_path):
    want = read_ground_truth(_write_pkl(tmp_path / "gnd_case.pkl", CASE))
    for suffix in ("pkl", "mat"):
        path = write_ground_truth(tmp_path / f"gnd_out.{suffix}", CASE)
        _same(read_ground_truth(path), want)
        _same(read_ground_truth(write_ground_truth(tmp_path / f"gnd_again.{suffix}", want)), want)
    assert scipy.io.loadmat(tmp_path / "gnd_out.mat")["gnd"][0, 0]["easy"].tolist() == [[2.0, 5.0]]
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(DataError, match=r"gnd_bad.pkl: gnd\[1\] \(query q1\): hard index 6 out of range"):
        write_ground_truth(tmp_path / "gnd_bad.pkl", {**CONTRACT, "gnd": [CONTRACT["gnd"][0],
                                                                          {**CONTRACT["gnd"][1], "hard": [6]}]})
    assert not (tmp_path / "gnd_bad.pkl").exists()
