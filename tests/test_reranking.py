"""Re-ranking steps on constructed neighbour lists: fused local-feature scores, k-reciprocal re-ranking,
SuperGlobal's MDescAug re-ranking and diffusion, each fixing the case it is for and leaving padding and the tail
alone."""

from __future__ import annotations

import numpy as np

from landmark_kit import reranking
from landmark_kit.reranking import diffusion_rerank, kreciprocal_rerank, superglobal_rerank
from landmark_kit.retrieval import local_rerank


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _ranked(queries: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = queries @ index.T
    rows = np.argsort(-sims, axis=1, kind="stable")
    return rows, np.take_along_axis(sims, rows, axis=1)


def test_fused_local_score_keeps_a_confident_global_match_but_still_lets_inliers_decide_close_calls():
    rows = np.array([[7, 8, 9], [3, 4, 5]])
    scores = np.array([[0.9, 0.5, 0.45], [0.6, 0.58, 0.3]])
    inliers = np.array([[20, 200, 0], [0, 40, 0]])
    product, _ = local_rerank(rows, scores, inliers)
    assert product[0].tolist() == [8, 7, 9]  # one large noisy count overturns a confident global first
    fused, fused_scores = local_rerank(rows, scores, inliers, fusion=0.3, half=10)
    assert fused[0].tolist() == [7, 8, 9]  # the bonus saturates at 0.3: 0.9 + 0.2 beats 0.5 + 0.29
    assert fused[1].tolist() == [4, 3, 5]  # 0.58 + 0.24 beats 0.6 + 0: verified matches still win close calls
    assert fused_scores[1].tolist() == [0.58, 0.6, 0.3]  # similarities travel with their rows


def test_kreciprocal_moves_a_hub_behind_mutual_neighbours():
    index = _unit([[1, 0.2, 0.3, 0, 0], [1, 0.2, -0.3, 0, 0], [1, 0.2, 0, 0.3, 0],  # 0-2: the query's landmark
                   [1, 0.7, 0, 0, 0],  # 3: a hub, the query's nearest, whose own neighbours are clutter
                   [0.8, 1, 0, 0, 0.05], [0.8, 1, 0.05, 0, 0], [0.8, 1, 0, 0.05, 0], [0.8, 1, 0, 0, -0.05]])
    query = _unit([[1, 0.45, 0, 0, 0]])
    rows, scores = _ranked(query, index)
    assert rows[0, 0] == 3
    out, out_scores = kreciprocal_rerank(rows, scores, query, index, m=8, k1=4, lam=0.3)
    assert set(out[0, :3].tolist()) == {0, 1, 2} and out[0, 3] == 3
    assert np.allclose(out_scores, (query @ index.T)[0, out[0]])
    padded = np.concatenate([rows[:, :5], -np.ones((1, 2), np.int64), rows[:, 5:]], axis=1)
    padded_scores = np.concatenate([scores[:, :5], np.zeros((1, 2)), scores[:, 5:]], axis=1)
    out, _ = kreciprocal_rerank(padded, padded_scores, query, index, m=7, k1=4, lam=0.3)
    assert out[0, 5:7].tolist() == [-1, -1] and out[0, 7:].tolist() == rows[0, 5:].tolist()  # padding, tail kept


def _superglobal_reference(query: np.ndarray, feats: np.ndarray, k: int, beta: float) -> np.ndarray:
    """SuperGlobal's re-ranking score of each shortlisted image, written out image by image."""
    refined = []
    for x in feats:
        sims = feats @ x
        order = np.argsort(-sims, kind="stable")[: k + 1]
        weights = np.array([1.0] + [beta * max(s, 0.0) for s in sims[order[1:]]])
        refined.append((weights[:, None] * feats[order]).sum(axis=0) / weights.sum())
    refined = np.array(refined)
    first = refined @ query
    best = np.argsort(-first, kind="stable")[: k + 1]
    expanded = refined[best].max(axis=0)
    return (first + refined @ expanded) / 2


def test_superglobal_matches_its_definition_and_drops_an_isolated_false_match():
    rng = np.random.default_rng(0)
    index = _unit(rng.normal(size=(12, 6)))
    query = _unit(rng.normal(size=(1, 6)))
    rows, scores = _ranked(query, index)
    out, _ = superglobal_rerank(rows, scores, query, index, m=10, k=3, beta=0.15)
    want = _superglobal_reference(query[0], index[rows[0, :10]], 3, 0.15)
    assert out[0, :10].tolist() == rows[0, :10][np.argsort(-want, kind="stable")].tolist()
    assert out[0, 10:].tolist() == rows[0, 10:].tolist()
    index = _unit([[1, 0.4, 0.02, 0, 0], [1, 0.4, 0, 0.02, 0], [1, 0.4, 0, 0, 0.02],  # 0-2: a tight landmark
                   [1, 0, 0.45, 0, 0],  # 3: the query's nearest, like none of the others
                   [0, 1, 0, 0, 0], [0, 0, 1, 0.2, 0]])
    query = _unit([[1, 0.2, 0.25, 0, 0]])
    rows, scores = _ranked(query, index)
    assert rows[0, 0] == 3
    out, _ = superglobal_rerank(rows, scores, query, index, m=6, k=2, beta=0.15)
    assert set(out[0, :3].tolist()) == {0, 1, 2} and out[0, 3] == 3


def test_the_kernel_estimate_counts_global_re_ranking():
    import pytest

    from landmark_kit.ensemble import EnsembleConfig, MemberConfig
    from landmark_kit.estimate import Rates, estimate
    from landmark_kit.predict import PredictConfig

    ensemble = EnsembleConfig(members=[MemberConfig(name="a", backbone="x", image_size=48)])
    rates = Rates(forward={"48px": 100.0}, local=10.0, verify=20.0, search_gflops=1.0)
    rows = estimate(ensemble, PredictConfig(kreciprocal=50, superglobal=20), rates, 1000, 2000, 3000, dim=64)
    steps = {r["step"]: r["hours"] for r in rows}
    step = "global re-ranking (k-reciprocal of top 50, SuperGlobal of top 20)"
    assert steps[step] == pytest.approx(2 * 1000 * (51 ** 2 + 21 ** 2) * 64 / 1e9 / 3600)
    rows = estimate(ensemble, PredictConfig(diffusion=30), rates, 1000, 2000, 3000, dim=64)
    steps = {r["step"]: r["hours"] for r in rows}  # similarities plus the dense solve of 31 nodes per query
    assert steps["global re-ranking (diffusion of top 30)"] == pytest.approx(
        1000 * (2 * 31 ** 2 * 64 + 2 * 31 ** 3 / 3) / 1e9 / 3600)
    assert not any(r["step"].startswith("global") for r in estimate(ensemble, PredictConfig(), rates, 1000, 2000, 3000))


def _diffusion_reference(query: np.ndarray, feats: np.ndarray, k: int, alpha: float, gamma: float) -> np.ndarray:
    """Diffusion scores of the shortlisted images, the graph built node by node and the system inverted."""
    nodes = np.concatenate([query[None], feats])
    sims = nodes @ nodes.T
    n = len(nodes)
    nearest = [set([j for j in np.argsort(-sims[i], kind="stable") if j != i][:k]) for i in range(n)]
    a = np.array([[max(sims[i, j], 0.0) ** gamma if i != j and j in nearest[i] and i in nearest[j] else 0.0
                   for j in range(n)] for i in range(n)])
    scale = np.array([1 / np.sqrt(d) if d > 0 else 0.0 for d in a.sum(axis=1)])
    s = scale[:, None] * a * scale[None, :]
    return np.linalg.inv(np.eye(n) - alpha * s)[1:, 0]


def test_diffusion_lifts_a_far_image_along_a_chain_of_mutual_neighbours_above_a_closer_isolated_one():
    angles = np.deg2rad([7, 15, 22, 30, 37, 45])  # 1-6: the query's landmark seen from farther and farther
    index = np.concatenate([[[0.8, 0.0, 0.6]],  # 0: closer to the query than 6, but no one's near neighbour
                            np.stack([np.cos(angles), np.sin(angles), 0 * angles], axis=1)]).astype(np.float32)
    query = np.array([[1, 0, 0]], np.float32)
    rows, scores = _ranked(query, index)
    assert rows[0].tolist() == [1, 2, 3, 4, 0, 5, 6]  # plain similarity puts the outlier before 5 and 6
    out, out_scores = diffusion_rerank(rows, scores, query, index, m=7, k=2)
    assert out[0].tolist() == [1, 2, 3, 4, 5, 6, 0]
    assert np.allclose(out_scores, (query @ index.T)[0, out[0]])  # similarities travel with their rows
    want = _diffusion_reference(query[0], index[rows[0]], 2, 0.99, 3.0)
    assert want[rows[0].tolist().index(0)] == 0.0 and np.all(np.delete(want, rows[0].tolist().index(0)) > 0)


def test_diffusion_keeps_padding_last_and_the_tail_behind():
    rng = np.random.default_rng(1)
    index = _unit(rng.normal(size=(12, 6)))
    query = _unit(rng.normal(size=(1, 6)))
    rows, scores = _ranked(query, index)
    padded = np.concatenate([rows[:, :5], -np.ones((1, 2), np.int64), rows[:, 5:]], axis=1)
    padded_scores = np.concatenate([scores[:, :5], np.zeros((1, 2)), scores[:, 5:]], axis=1)
    out, out_scores = diffusion_rerank(padded, padded_scores, query, index, m=7, k=2)
    assert sorted(out[0, :5].tolist()) == sorted(rows[0, :5].tolist())
    assert out[0, 5:7].tolist() == [-1, -1] and out[0, 7:].tolist() == rows[0, 5:].tolist()
    assert out_scores[0, 5:7].tolist() == [0, 0] and out_scores[0, 7:].tolist() == scores[0, 5:].tolist()
    want = _diffusion_reference(query[0], index[rows[0, :5]], 2, 0.99, 3.0)
    assert out[0, :5].tolist() == rows[0, :5][np.argsort(-want, kind="stable")].tolist()


def test_diffusion_matches_its_definition_whatever_the_query_blocks(monkeypatch):
    rng = np.random.default_rng(2)
    index = _unit(rng.normal(size=(40, 8)))
    queries = _unit(rng.normal(size=(5, 8)))
    rows, scores = _ranked(queries, index)
    whole, whole_scores = diffusion_rerank(rows, scores, queries, index, m=12, k=4, alpha=0.9)
    for q in range(len(queries)):
        want = _diffusion_reference(queries[q], index[rows[q, :12]], 4, 0.9, 3.0)
        assert whole[q, :12].tolist() == rows[q, :12][np.argsort(-want, kind="stable")].tolist()
        assert whole[q, 12:].tolist() == rows[q, 12:].tolist()
    assert (whole[:, :12] != rows[:, :12]).any()  # the case is not the identity
    monkeypatch.setattr(reranking, "CHUNK", 2)
    blocks, block_scores = diffusion_rerank(rows, scores, queries, index, m=12, k=4, alpha=0.9)
    assert np.array_equal(blocks, whole) and np.array_equal(block_scores, whole_scores)


def test_the_recipe_refuses_a_diffusion_alpha_outside_zero_one():
    import pytest

    from landmark_kit.data import DataError
    from landmark_kit.predict import PredictConfig, check_config

    check_config(PredictConfig(diffusion=50, diffusion_alpha=0.9))
    for alpha in (1.0, 0.0, -0.5):
        with pytest.raises(DataError, match="diffusion_alpha"):
            check_config(PredictConfig(diffusion=50, diffusion_alpha=alpha))
    with pytest.raises(DataError, match="diffusion_k"):
        check_config(PredictConfig(diffusion=50, diffusion_k=0))
