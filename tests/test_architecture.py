"""The import rules docs/architecture.md states hold for every module, lazy imports included."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "landmark_kit"
TRAINING = "training"
INFERENCE_ENTRIES = ["stages/01_clean.py", "stages/03_ensemble.py", "stages/04_predict.py", "stages/05_score.py",
                     "kernels/recognition/kernel.py", "kernels/retrieval/kernel.py"]


def layers() -> tuple[dict[str, str], dict[str, set[str]]]:
    """From the doc's table: module -> layer, and layer -> the layers it may import (itself included)."""
    layer_of, allowed = {}, {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("Layer", "") or set(cells[0]) <= {"-"}:
            continue
        layer = cells[0]
        for module in re.findall(r"`(\w+)`", cells[1]):
            layer_of[module] = layer
        allowed[layer] = {layer, *(w.strip() for w in cells[2].split(",") if w.strip())}
    return layer_of, allowed


def package_imports(path: Path) -> set[str]:
    """Modules of landmark_kit that ``path`` imports anywhere in its body (top level or inside functions)."""
    found = set()
    in_package = path.parent == PACKAGE
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("landmark_kit.")}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and in_package:
                found |= {module.split(".")[0]} if module else {a.name for a in node.names}
            elif node.level == 0 and module == "landmark_kit":
                found |= {a.name for a in node.names}
            elif node.level == 0 and module.startswith("landmark_kit."):
                found.add(module.split(".")[1])
    return found


def graph() -> dict[str, set[str]]:
    return {p.stem: package_imports(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def reach(starts: set[str], edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(edges.get(module, ()))
    return seen


def test_every_module_has_one_layer_and_the_table_names_no_missing_module():
    layer_of, allowed = layers()
    modules = set(graph())
    assert not modules - set(layer_of), f"modules missing from docs/architecture.md: {sorted(modules - set(layer_of))}"
    assert not set(layer_of) - modules, f"docs/architecture.md names absent modules: {sorted(set(layer_of) - modules)}"
    assert all(targets <= set(allowed) for targets in allowed.values())


def test_imports_follow_the_layers():
    layer_of, allowed = layers()
    bad = [f"{m} ({layer_of[m]}) imports {t} ({layer_of[t]})" for m, targets in graph().items() for t in targets
           if m in layer_of and t in layer_of and layer_of[t] not in allowed[layer_of[m]]]  # unlisted: test above
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = graph()
    for module in edges:
        assert module not in reach(edges[module], edges), f"{module} imports itself through others"


def test_the_inference_path_reaches_no_training_module():
    layer_of, _ = layers()
    edges = graph()
    for entry in INFERENCE_ENTRIES:
        reached = reach(package_imports(ROOT / entry), edges)
        assert not {m for m in reached if layer_of.get(m) == TRAINING}, f"{entry} reaches training code"


@pytest.mark.parametrize("stage", ["stages/03_ensemble.py", "stages/04_predict.py", "stages/05_score.py"])
def test_a_stage_on_the_inference_path_loads_no_training_module(stage):
    layer_of, _ = layers()
    training = {m for m, layer in layer_of.items() if layer == TRAINING}
    out = subprocess.run([sys.executable, "-X", "importtime", stage, "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(re.findall(r"landmark_kit\.(\w+)", out.stderr))
    assert loaded and not loaded & training, sorted(loaded & training)
