"""Shared fixtures: a tiny synthetic competition generated once per test session."""

from __future__ import annotations

import pytest

from landmark_kit.synthetic import SyntheticConfig, generate

TINY = SyntheticConfig(landmarks=6, seed=3, train_mean=6.0, workers=1, min_side=256, max_side=320)


@pytest.fixture(scope="session")
def tiny_competition(tmp_path_factory):
    """A 6-landmark synthetic competition (about 100 images), shared read-only by the tests."""
    root = tmp_path_factory.mktemp("tiny_competition")
    generate(root, TINY, progress=False)
    return root
