"""Typed YAML recipes: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from landmark_kit.recipes import RecipeError, add_recipe_flags, flag_overrides, load_recipe, save_recipe


@dataclass
class Inner:
    name: str
    weight: float = 1.0
    path: str | None = None


@dataclass
class Outer:
    size: int = 224
    scales: tuple[float, ...] = (1.0,)
    members: list[Inner] = field(default_factory=list)
    flag: bool = False


def test_yaml_defaults_and_overrides_round_trip(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("size: 320\nscales: [0.75, 1, 1.25]\nmembers:\n  - name: a\n    weight: 2\n")
    cfg = load_recipe(Outer, path, {"flag": True})
    assert cfg == Outer(320, (0.75, 1.0, 1.25), [Inner("a", 2.0)], True)
    save_recipe(cfg, tmp_path / "saved.yaml")
    assert load_recipe(Outer, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("sise: 3\n", r"unknown key\(s\) \['sise'\]"),
        ("size: big\n", "size: expected int"),
        ("size: true\n", "size: expected int"),
        ("members: [{weight: 1}]\n", "missing"),
        ("members: [{name: a, colour: red}]\n", r"members\[0\]: unknown key"),
        ("- 1\n- 2\n", "mapping at the top level"),
        ("size: [\n", "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises((RecipeError, TypeError), match=message):
        load_recipe(Outer, path)


def test_extends_recipe_chain(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("size: 320\nflag: true\nscales: [1, 2]\n")
    (tmp_path / "sub" / "mid.yaml").write_text("extends: ../base.yaml\nsize: 400\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("extends: mid.yaml\nscales: [3]\n")
    assert load_recipe(Outer, tmp_path / "sub" / "leaf.yaml", {"flag": False}) == Outer(400, (3.0,), [], False)
    (tmp_path / "base.yaml").write_text("extends: sub/leaf.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(Outer, tmp_path / "sub" / "leaf.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="orphan.yaml: extends .nowhere.yaml., which is not a recipe file"):
        load_recipe(Outer, tmp_path / "orphan.yaml")


def test_list_fields_take_several_values():
    @dataclass
    class WithList:
        sides: list[int] = field(default_factory=list)
        members: list[Inner] = field(default_factory=list)

    ap = argparse.ArgumentParser()
    add_recipe_flags(ap, WithList)
    assert flag_overrides(ap.parse_args(["--sides", "352", "384"]), WithList) == {"sides": [352, 384]}
    assert flag_overrides(ap.parse_args(["--sides"]), WithList) == {"sides": []}
    assert flag_overrides(ap.parse_args([]), WithList) == {}
    with pytest.raises(SystemExit):
        ap.parse_args(["--members", "a"])
    with pytest.raises(SystemExit):
        ap.parse_args(["--sides", "big"])


def test_cli_flags_only_override_what_is_given():
    ap = argparse.ArgumentParser()
    add_recipe_flags(ap, Inner)
    args = ap.parse_args(["--name", "x", "--path", "none"])
    assert flag_overrides(args, Inner) == {"name": "x", "path": None}
    with pytest.raises(SystemExit):
        ap.parse_args(["--weight", "heavy"])


def test_launcher_rank_takes_env_only_where_no_flag_set_it(monkeypatch):
    from landmark_kit.recipes import launcher_rank

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert launcher_rank({"k": 5}) == {"k": 5, "rank": 3, "world_size": 8}
    assert launcher_rank({"rank": 1}) == {"rank": 1, "world_size": 8}  # a flag wins over the environment
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert launcher_rank({}) == {}


def test_a_plugin_registers_once_and_is_imported_the_first_time_a_recipe_names_it(tmp_path, monkeypatch):
    from landmark_kit.recipes import add_plugin, find_plugin

    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "__init__.py").write_text("REGISTRY = {}\n")
    (tmp_path / "plugs" / "thing_lazy_one.py").write_text("from plugs import REGISTRY\nREGISTRY['lazy-one'] = 7\n")
    (tmp_path / "plugs" / "thing_broken.py").write_text("import no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from plugs import REGISTRY

    add_plugin(REGISTRY, "eager", 1, "thing")
    with pytest.raises(ValueError, match="thing 'eager' is registered twice"):
        add_plugin(REGISTRY, "eager", 2, "thing")
    assert find_plugin(REGISTRY, "lazy-one", "thing", "plugs.thing") == 7  # plugs/thing_lazy_one.py, imported
    with pytest.raises(RecipeError, match=r"unknown thing 'nope'; choose one of \['eager', 'lazy-one'\]"):
        find_plugin(REGISTRY, "nope", "thing", "plugs.thing", RecipeError)
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):  # a plug-in's own import errors surface
        find_plugin(REGISTRY, "broken", "thing", "plugs.thing")
