"""Typed recipes: small dataclasses read from / written to YAML, with unknown keys and wrong types refused.

A recipe file holds only what differs from the defaults; the full resolved config is saved next to every
artifact it produced, so a run can be reproduced from its own folder. Plug-ins that recipes name (local-feature
backends, training heads) live in registries filled by :func:`add_plugin` and read by :func:`find_plugin`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .artifacts import write_text

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe that does not fit its dataclass; the message names the file and the key."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping for {hint.__name__}, found {value!r}")
        return from_dict(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, found {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise RecipeError(f"{where}: expected {len(args)} values, found {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, found {value!r}")
        return {k: _coerce(v, args[1] if args else Any, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise RecipeError(f"{where}: expected int, found {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise RecipeError(f"{where}: expected {hint.__name__}, found {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "recipe") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; {cls.__name__} has {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain YAML-able structure of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


KIT_ROOT = Path(__file__).resolve().parents[1]  # the checkout: cleaning/, ensembles/, submissions/, training/


def recipe_field(default: Any = None) -> Any:
    """A dataclass field naming another recipe file: read from a recipe, it resolves against that recipe's
    folder (:func:`resolve_reference`), not against the current directory."""
    return dataclasses.field(default=default, metadata={"recipe": True})


def find_recipe(path: str | os.PathLike) -> Path:
    """``path`` as given, or, when no such file exists and it is relative, the kit's own recipe of that name
    (``ensembles/zero-shot.yaml`` works from any directory)."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (KIT_ROOT / path).is_file():
        return KIT_ROOT / path
    return path


def resolve_reference(value: str, referring: Path) -> str:
    """A recipe file named inside recipe ``referring``: absolute as is; else the first that exists of the
    referring folder, its parent (``cleaning/x.yaml`` naming ``ensembles/y.yaml``) and the kit's checkout."""
    if Path(value).is_absolute():
        return value
    folder = referring.resolve().parent
    for base in (folder, folder.parent, KIT_ROOT):
        if (base / value).is_file():
            return str(base / value)
    raise RecipeError(f"{referring}: names recipe {value!r}, found neither beside it ({folder / value}) nor in "
                      f"{folder.parent} or the kit's folders ({KIT_ROOT / value})")


def read_recipe_fields(path: str | os.PathLike, _seen: tuple[Path, ...] = (), refs: frozenset[str] = frozenset()
                       ) -> dict[str, Any]:
    """The fields of a YAML recipe; ``extends: other.yaml`` (relative to the recipe's folder) first loads that
    recipe's fields, which this one then overrides, so variants of a recipe state only what differs. Keys in
    ``refs`` name other recipe files and are resolved against the file that states them."""
    path = find_recipe(path)
    if path.resolve() in _seen:
        raise RecipeError(f"{path}: extended recipes form a cycle ({' -> '.join(str(p) for p in _seen)})")
    try:
        loaded = yaml.safe_load(path.read_bytes()) or {}  # bytes: YAML decodes UTF-8/16 with or without a BOM
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {path}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    for key in refs & loaded.keys():
        if isinstance(loaded[key], str):
            loaded[key] = resolve_reference(loaded[key], path)
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise RecipeError(f"{path}: extends must name a recipe file, found {base!r}")
    if not (path.parent / base).is_file():
        raise RecipeError(f"{path}: extends {base!r}, which is not a recipe file ({path.parent / base})")
    return {**read_recipe_fields(path.parent / base, (*_seen, path.resolve()), refs), **loaded}


def load_recipe(cls: type[T], path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults of ``cls``, updated by the YAML file at ``path`` (if any, with its ``extends`` chain), then by
    ``overrides``.

    Args:
        cls: the recipe dataclass (``TrainConfig``, ``EnsembleConfig``, ``PredictConfig``, ...).
        path: a YAML file holding only what differs from the defaults; None for the defaults.
        overrides: field values that win over the file (command-line flags).
    """
    refs = frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("recipe"))
    data: dict[str, Any] = read_recipe_fields(path, refs=refs) if path is not None else {}
    data.update(overrides or {})
    return from_dict(cls, data, str(path) if path else cls.__name__)


def config_digest(obj: Any, length: int = 10) -> str:
    """Short stable hash of a config: names cache folders, so a changed config never reuses stale results."""
    import hashlib

    text = yaml.safe_dump(to_dict(obj), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def save_recipe(obj: Any, path: str | os.PathLike) -> Path:
    """Write the full resolved config as YAML, atomically."""
    return write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def add_plugin(registry: dict[str, Any], name: str, entry: Any, what: str) -> None:
    """Register ``entry`` as ``name`` in a registry of plug-ins named by recipes (``what`` they are); once only."""
    if name in registry:
        raise ValueError(f"{what} {name!r} is registered twice")
    registry[name] = entry


def find_plugin(registry: dict[str, Any], name: str, what: str, module_prefix: str,
                error: type[Exception] = ValueError) -> Any:
    """``registry[name]``, importing the plug-in module ``<module_prefix>_<name>`` (``-`` as ``_``) first when
    ``name`` is not registered yet; an unknown name is an ``error`` listing the registered ones."""
    plugin = name.replace("-", "_")
    module = f"{module_prefix}_{plugin}"
    if name not in registry and f"_{plugin}".isidentifier():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    if name not in registry:
        raise error(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
    return registry[name]


def _parse_flag(text: str, hint: Any) -> Any:
    """A command-line string as the field's type; ``none`` gives None for optional fields."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if text.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    base = args[0]
    if base is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true/false, found {text!r}")
        return text.lower() in ("true", "1", "yes")
    return base(text) if base in (int, float, str) else text


def add_recipe_flags(parser: argparse.ArgumentParser, cls: type, only: set[str] | None = None) -> None:
    """One ``--field-name`` flag per scalar field of ``cls``, and one taking several values per list of
    scalars (``--sides 352 384 448 512``); flags not given stay out of the namespace."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        hint, nargs = hints[f.name], None
        if typing.get_origin(hint) is list and typing.get_args(hint)[0] in (int, float, str):
            hint, nargs = typing.get_args(hint)[0], "*"
        elif typing.get_origin(hint) in (list, tuple, dict) or dataclasses.is_dataclass(hint):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS, nargs=nargs,
                            type=lambda text, h=hint: _parse_flag(text, h), help=f"(default {default!r})")


def flag_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The recipe fields given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def launcher_rank(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` plus ``rank`` / ``world_size`` from torchrun's (or any launcher's) RANK / WORLD_SIZE
    environment variables, where no flag set them."""
    out = dict(overrides)
    for env, key in (("RANK", "rank"), ("WORLD_SIZE", "world_size")):
        if key not in out and env in os.environ:
            out[key] = int(os.environ[env])
    return out
