"""Security basics: the code never unpickles untrusted files, never builds shell strings, reads
YAML safely; a booby-trapped checkpoint is refused without running its payload; ids cannot become paths
outside the data root."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from landmark_kit.data import DataError, image_path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("landmark_kit", "stages", "kernels", "benchmarks")
                 for p in (ROOT / folder).rglob("*.py"))
# The one module allowed to import pickle, and why: the Revisited Oxford / Paris benchmark publishes its ground
# truth as gnd_*.pkl; it is read by a pickle.Unpickler whose find_class admits plain containers and numpy
# arrays only (checked below: a subclass overriding find_class, no pickle.load / loads anywhere).
PICKLE_ALLOWED = {"landmark_kit/revisited_metric.py"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.unparse(kw.value)
    return None


def test_no_unsafe_deserialisation_or_shell_in_the_code():
    assert len(SOURCES) > 40
    problems, checked = [], 0
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                allowed = names == ["pickle"] and path.relative_to(ROOT).as_posix() in PICKLE_ALLOWED
                if {"pickle", "cPickle", "dill", "marshal", "shelve"} & set(names) and not allowed:
                    problems.append(f"{path}:{node.lineno}: imports {names}")
            if isinstance(node, ast.ClassDef) and "pickle.Unpickler" in map(ast.unparse, node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if "find_class" not in methods:
                    problems.append(f"{path}:{node.lineno}: {node.name} subclasses pickle.Unpickler without find_class")
        for call, name in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{call.lineno}: {name}"
            if name == "torch.load":
                checked += 1
                if _keyword(call, "weights_only") != "True":
                    problems.append(f"{where} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
                problems.append(f"{where} (only a find_class-restricted subclass may unpickle)")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec", "os.system", "os.popen"):
                problems.append(where)
            if name.startswith("subprocess.") and _keyword(call, "shell") not in (None, "False"):
                problems.append(f"{where} with shell={_keyword(call, 'shell')}")
            if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") not in (None, "False"):
                problems.append(f"{where} with allow_pickle")
    assert not problems, "\n".join(problems)
    assert checked >= 3  # the scan sees the checkpoint loads it vouches for (train, models)


class _Payload:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_booby_trapped_checkpoint_is_refused_without_running_it(tmp_path):
    from landmark_kit.models import read_state_dict
    from landmark_kit.checkpoint import load_trained

    marker = tmp_path / "ran.txt"
    bad = tmp_path / "model.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"model": {"w": _Payload(marker)}, "config": {}}, fh)
    for load in (load_trained, read_state_dict):
        with pytest.raises(pickle.UnpicklingError):
            load(bad)
    assert not marker.exists()
    np.save(tmp_path / "objects.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    from landmark_kit.ensemble import load_features

    (tmp_path / "objects.ids").write_text("0000000000000000\n")
    with pytest.raises(ValueError, match="allow_pickle"):
        load_features(tmp_path, "objects", mmap=False)
    assert not marker.exists()
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")  # plain tensors still load
    assert read_state_dict(tmp_path / "plain.pt")["w"].shape == (2,)


class _ShellPayload:
    """Unpickling this runs a shell command that writes a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"echo pwned > {self.marker}",))


def test_a_booby_trapped_ground_truth_pickle_is_refused_without_running_it(tmp_path):
    from landmark_kit.revisited_metric import read_ground_truth

    marker = tmp_path / "ran.txt"
    gnd = {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 1, 1], "easy": [0], "hard": [], "junk": []}]}
    for protocol in (0, 2, 5):
        bad = tmp_path / f"gnd_roxford5k_{protocol}.pkl"
        bad.write_bytes(pickle.dumps({**gnd, "qimlist": [_ShellPayload(marker)]}, protocol=protocol))
        with pytest.raises(DataError, match=rf"gnd_roxford5k_{protocol}.pkl: refused global (posix|os)\.system"):
            read_ground_truth(bad)
        assert not marker.exists()
    bad.write_bytes(pickle.dumps({**gnd, "gnd": [_Payload(marker)]}))
    with pytest.raises(DataError, match="refused global pathlib"):
        read_ground_truth(bad)
    assert not marker.exists()
    (tmp_path / "gnd_ok.pkl").write_bytes(pickle.dumps(gnd, protocol=2))
    assert read_ground_truth(tmp_path / "gnd_ok.pkl").imlist == ["a"]


@pytest.mark.parametrize("image_id", ["../../../etc/passwd", "0123456789abcde/", "..", "0123456789ABCDEF",
                                      "0123456789abcdef.jpg", "/tmp/0123456789abcdef", "0123456789abcde\x00"])
def test_ids_never_become_paths_outside_the_root(image_id, tmp_path):
    with pytest.raises(DataError, match="invalid image id"):
        image_path(tmp_path, "test", image_id)
