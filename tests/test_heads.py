"""Training heads beside the margin heads: GE2E against a loop transcription of the paper's formula, the triplet
head's mining, the N x M class-balanced sampler (buckets, ranks, purity), the U-Net reconstruction head, the head
registry, and stage 02 with ``--head triplet|ge2e|reconstruction`` on the tiny synthetic set, including exact
resume after a SIGKILL."""

from __future__ import annotations

import csv
import io
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import _assert_same_run, _cmd, _env, _kill_after_first_checkpoint, syn8  # noqa: F401 (fixture)

from landmark_kit.losses import GE2ELoss, MarginHead, TripletHead, WithAuxHead
from landmark_kit.recipes import RecipeError
from landmark_kit.train import TrainConfig, balanced_batches, check_config, make_batches

ROOT = Path(__file__).resolve().parents[1]


def _ge2e_by_the_formula(emb: torch.Tensor, labels: list[int], w: float, b: float) -> tuple[float, torch.Tensor]:
    """Wan et al. 2018, eq. 5-9 written out: c_k the class means of normalised embeddings, c_j^(-i) without
    e_ji; S_ji,k = w cos(e_ji, c) + b; L = sum over i of -S_i,own + log sum_k exp S_i,k (averaged here)."""
    e = [v / v.norm() for v in emb]
    classes = sorted(set(labels))
    members = {k: [i for i, c in enumerate(labels) if c == k] for k in classes}
    scores = torch.zeros(len(e), len(classes), dtype=torch.float64)
    total = 0.0
    for i, ji in enumerate(e):
        for col, k in enumerate(classes):
            pool = [e[m] for m in members[k] if not (k == labels[i] and m == i)]
            centroid = sum(pool) / len(pool)
            cos = float(ji @ centroid) / (float(ji.norm()) * float(centroid.norm()))
            scores[i, col] = w * cos + b
        own = classes.index(labels[i])
        total += -float(scores[i, own]) + math.log(sum(math.exp(float(s)) for s in scores[i]))
    return total / len(e), scores


def test_ge2e_matches_the_papers_formula():
    torch.manual_seed(0)
    emb = torch.randn(12, 6, dtype=torch.float64)
    labels = [3, 3, 3, 7, 7, 7, 1, 1, 1, 5, 5, 5]
    head = GE2ELoss()
    with torch.no_grad():
        head.w.fill_(4.0)
        head.b.fill_(-1.5)
    loss, correct = head(emb.float(), torch.tensor(labels))
    expected, scores = _ge2e_by_the_formula(emb, labels, 4.0, -1.5)
    got, _ = head.scores(emb.float(), torch.tensor(labels))
    assert torch.allclose(got.double(), scores, atol=1e-5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert int(correct) == int((scores.argmax(1) == torch.tensor([1, 1, 1, 3, 3, 3, 0, 0, 0, 2, 2, 2])).sum())
    loss.backward()
    assert head.w.grad is not None and head.b.grad is not None
    assert GE2ELoss().w.item() == 10.0 and GE2ELoss().b.item() == -5.0


def test_ge2e_learns_to_separate_classes():
    torch.manual_seed(0)
    emb = torch.randn(16, 8, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(4)
    head = GE2ELoss()
    optimizer = torch.optim.SGD([emb, *head.parameters()], lr=0.5)
    first = None
    for _ in range(50):
        loss, correct = head(emb, labels)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 4 and int(correct) == 16


@pytest.mark.parametrize("mining", ["batch-hard", "semi-hard"])
def test_triplet_head_mines_and_counts_neighbours(mining):
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(4)
    centres = F.normalize(torch.randn(4, 8), dim=1)
    emb = centres[labels] + 0.05 * torch.randn(16, 8)
    loss, correct = TripletHead(0.1, mining)(emb, labels)
    assert math.isfinite(loss.item()) and int(correct) == 16
    shuffled = labels[torch.randperm(16)]
    assert TripletHead(0.1, mining)(torch.randn(16, 8), shuffled)[0].item() > 0
    with pytest.raises(ValueError):
        TripletHead(0.1, "easy")


def test_balanced_batches_are_n_by_m_within_a_bucket_and_shard_across_ranks():
    rng = np.random.default_rng(0)
    buckets = rng.integers(0, 3, 300)
    labels = rng.integers(0, 12, 300)
    labels[:3], buckets[:3] = 99, 0  # a label with 3 images in bucket 0, fewer than M = 4
    buckets[3] = 5  # a bucket holding a single image (one label): it gives no batch
    batches = balanced_batches(buckets, labels, per_class=4, classes=3, seed=1, epoch=2)
    assert batches == balanced_batches(buckets, labels, 4, 3, seed=1, epoch=2)
    assert batches != balanced_batches(buckets, labels, 4, 3, seed=1, epoch=3)
    assert len(batches) == sum(round((buckets == b).sum() / 12) for b in range(3))
    for batch in batches:
        assert len(batch) == 12 and len(set(buckets[batch])) == 1
        values, counts = np.unique(labels[batch], return_counts=True)
        assert len(values) == 3 and set(counts) == {4}
        for value in values:  # without replacement while the label has M images in the bucket, else with
            pool = ((labels == value) & (buckets == buckets[batch[0]])).sum()
            distinct = len(set(np.array(batch)[labels[batch] == value]))
            assert distinct == 4 if pool >= 4 else distinct <= pool
    assert 3 not in {i for b in batches for i in b}
    assert any(99 in labels[b] for b in batches)
    ranks = [batches[rank::2] for rank in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(batches) and not set(map(tuple, ranks[0])) & set(map(tuple, ranks[1]))
    cfg = TrainConfig(head="ge2e", batch_size=12, per_class=4, seed=1)
    assert make_batches(cfg, buckets, labels, 2) == batches


def test_embedding_heads_need_n_by_m_batches():
    check_config(TrainConfig(head="triplet", batch_size=16, per_class=4))
    check_config(TrainConfig(head="ge2e", aux_head="arcface"))
    for bad in ({"batch_size": 18}, {"per_class": 1}, {"per_class": 16}, {"mining": "easy"}, {"aux_head": "ge2e"},
                {"head": "arcface", "aux_head": "cosface"}):
        with pytest.raises(RecipeError):
            check_config(TrainConfig(**{"head": "triplet", "batch_size": 16, "per_class": 4, **bad}))


def test_aux_margin_head_adds_its_weighted_cross_entropy():
    torch.manual_seed(0)
    emb, labels = torch.randn(8, 6), torch.arange(4).repeat_interleave(2)
    main, aux = GE2ELoss(), MarginHead(6, 4, "arcface")
    loss, correct = WithAuxHead(main, aux, 0.5)(emb, labels)
    alone, alone_correct = main(emb, labels)
    assert loss.item() == pytest.approx(alone.item() + 0.5 * F.cross_entropy(aux(emb, labels), labels).item())
    assert int(correct) == int(alone_correct)


def _log(workdir: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((workdir / "log.csv").read_text())))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_triplet_head_trains_and_its_model_describes(syn8, tmp_path):
    """Stage 02 with --head triplet (semi-hard mining) + an ArcFace aux head for one epoch: a finite loss, the aux
    head's class weights in the checkpoint, a model.pt that stage 03's loader turns into normalised descriptors."""
    from landmark_kit.data import read_train_csv
    from landmark_kit.extract import describe_split
    from landmark_kit.models import Describer
    from landmark_kit.train import load_trained

    work = tmp_path / "triplet"
    _run(_cmd(syn8, work) + ["--head", "triplet", "--mining", "semi-hard", "--aux-head", "arcface",
                             "--aux-weight", "0.5", "--epochs", "1", "--final-epochs", "0", "--val-queries", "0"])
    rows = _log(work)
    assert len(rows) == 1 and all(math.isfinite(float(r["loss"])) for r in rows)
    module = torch.load(work / "last.pt", weights_only=True)["module"]
    assert module["head.aux.weight"].shape == (8, 128) and "head.aux.margins" in module  # one centre per landmark
    net, cfg = load_trained(work / "model.pt")
    assert cfg.head == "triplet" and cfg.mining == "semi-hard"
    ids = read_train_csv(syn8 / "train.csv")["id"].tolist()[:4]
    feats, _ = describe_split(Describer(net), syn8, "train", ids, size=96, batch_size=4, workers=0, device="cpu",
                              amp=False)
    assert feats.shape == (4, 128) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-4)


@pytest.mark.slow
def test_ge2e_head_trains_and_resumes_to_the_same_tensors(syn8, tmp_path):
    """Stage 02 with --head ge2e (1 epoch + the final BN-frozen one): finite losses, w and b learnt; a run
    SIGKILLed after its first checkpoint and restarted ends with exactly the uninterrupted run's tensors (w and b
    included). Five batches an epoch are too few for the loss to fall reliably: the unit test above checks it."""
    flags = ["--head", "ge2e", "--epochs", "1", "--val-queries", "0"]
    full, killed = tmp_path / "ge2e", tmp_path / "ge2e-killed"
    _run(_cmd(syn8, full) + flags)
    losses = [float(r["loss"]) for r in _log(full)]
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    head = torch.load(full / "last.pt", weights_only=True)["module"]
    assert head["head.w"].item() > 0 and head["head.w"].item() != 10.0 and head["head.b"].item() != -5.0
    _kill_after_first_checkpoint(_cmd(syn8, killed) + flags, killed, _env())
    assert "resuming" in _run(_cmd(syn8, killed) + flags).stderr
    _assert_same_run(full, killed)


def test_reconstruction_decoder_rebuilds_the_input_size_and_trains_the_descriptor():
    """The U-Net decoder returns an image of the input's odd size from the embedding and the pyramid's skips;
    the reconstruction loss reaches the neck (the descriptor is what it trains) and falls on a repeated batch."""
    from landmark_kit.models import LandmarkNet, create_backbone
    from landmark_kit.reconstruction import ReconstructionHead

    torch.manual_seed(0)
    net = LandmarkNet(create_backbone("resnet18"), dim=32)  # its first level is the stem (stride 2)
    head = ReconstructionHead(net.backbone.feature_info, 32)
    x = F.interpolate(torch.randn(4, 3, 9, 7), size=(72, 56), mode="bilinear")  # smooth: it can be rebuilt
    labels = torch.tensor([0, 0, 1, 1])
    final, skips = net.backbone.forward_intermediates(x, indices=head.levels)
    embedding = net.bn(net.fc(net.pool(final)))
    assert head.decoder(embedding, skips, final.shape[-2:], x.shape[-2:]).shape == x.shape
    optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-3)
    losses = []
    for _ in range(8):
        loss, correct = head(net, x, labels)
        optimizer.zero_grad()
        loss.backward()
        assert net.fc.weight.grad.abs().sum() > 0 and 0 <= int(correct) <= 4
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_reconstruction_refuses_what_it_cannot_train():
    check_config(TrainConfig(head="reconstruction"))
    for bad in ({"local_head": True}, {"aux_head": "arcface"}):
        with pytest.raises(RecipeError):
            check_config(TrainConfig(head="reconstruction", **bad))
    with pytest.raises(RecipeError, match="reconstruction"):  # unknown heads list the known ones
        check_config(TrainConfig(head="autoencoder"))


def test_a_new_head_is_one_registered_builder(monkeypatch):
    """A builder registered by name is a head: check_config takes it (N x M batches when balanced), make_batches
    and build_model follow it, an unknown name lists it, and a name is registered once."""
    from landmark_kit import heads
    from landmark_kit.train import build_model

    monkeypatch.setattr(heads, "HEADS", dict(heads.HEADS))  # registrations of this test stay here

    @heads.register_head("probe", batches="balanced")
    def probe(cfg: TrainConfig, counts: np.ndarray, backbone: torch.nn.Module) -> GE2ELoss:
        return GE2ELoss(init_w=1.0)

    cfg = TrainConfig(head="probe", model="test_efficientnet", weights=None, dim=16, batch_size=8, per_class=4)
    check_config(cfg)
    with pytest.raises(RecipeError, match="per_class"):
        check_config(TrainConfig(head="probe", batch_size=18, per_class=4))
    with pytest.raises(RecipeError, match=r"unknown head 'nope'; choose one of \[.*'probe'"):
        check_config(TrainConfig(head="nope"))
    with pytest.raises(ValueError, match="twice"):
        heads.register_head("probe")(probe)
    labels = np.repeat(np.arange(4), 4)
    assert make_batches(cfg, np.zeros(16, np.int64), labels, 0) == balanced_batches(
        np.zeros(16, np.int64), labels, 4, 2, cfg.seed, 0)
    _, head = build_model(cfg, np.bincount(labels))
    assert isinstance(head, GE2ELoss) and head.w.item() == 1.0


@pytest.mark.slow
def test_reconstruction_head_trains_and_resumes_to_the_same_tensors(syn8, tmp_path):
    """Stage 02 with --head reconstruction (1 epoch + the final BN-frozen one): finite losses, the decoder in
    last.pt but not in model.pt (a plain LandmarkNet), and exact resume after a SIGKILL, decoder included."""
    from landmark_kit.train import load_trained

    flags = ["--head", "reconstruction", "--epochs", "1", "--val-queries", "0"]
    full, killed = tmp_path / "unet", tmp_path / "unet-killed"
    _run(_cmd(syn8, full) + flags)
    losses = [float(r["loss"]) for r in _log(full)]
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    assert any(k.startswith("head.decoder.") for k in torch.load(full / "last.pt", weights_only=True)["module"])
    assert not any("decoder" in k for k in torch.load(full / "model.pt", weights_only=True)["model"])
    assert load_trained(full / "model.pt")[1].head == "reconstruction"
    _kill_after_first_checkpoint(_cmd(syn8, killed) + flags, killed, _env())
    assert "resuming" in _run(_cmd(syn8, killed) + flags).stderr
    _assert_same_run(full, killed)
