"""Named presets for ``distilled3dgs-run``: YAML files in the repository's ``configs/`` folder (in the wheel too).

A preset sets the defaults of the run's options (field names of ``RunConfig``, nested mappings for nested configs);
anything given on the command line still overrides it. ``--preset NAME`` looks for ``configs/NAME.yaml``; a path to
a YAML file works too, so a user can keep their own presets next to their data.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from distilled3dgs_ns.errors import UserError

_PACKAGE = Path(__file__).resolve().parent


def preset_dir() -> Path:
    """The presets' folder: the wheel's copy inside the package, else the checkout's ``configs/`` beside it."""
    shipped = _PACKAGE / "configs"
    return shipped if shipped.is_dir() else _PACKAGE.parent / "configs"


T = TypeVar("T")


class PresetError(UserError, ValueError):
    """A preset that does not exist or does not match the run's options."""


def available_presets() -> list[str]:
    """Names of the presets shipped in ``configs/``."""
    return sorted(path.stem for path in preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """``configs/<name>.yaml``, or ``name`` itself when it is a path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(
            f"no preset named '{name}' (looked for {path}); available: {', '.join(available_presets()) or 'none'}, "
            "or pass the path of a YAML file"
        )
    return path


def apply_mapping(base: T, values: dict[str, Any], where: str) -> T:
    """A copy of dataclass ``base`` with ``values`` applied; nested dataclasses take nested mappings.

    Unknown keys are errors (a typo in a preset must not be ignored); list-valued YAML entries become tuples where the
    field is a tuple.
    """
    known = {f.name: f for f in dataclasses.fields(base) if f.init}
    hints = typing.get_type_hints(type(base))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise PresetError(f"{where}: unknown option '{key}'; known: {', '.join(sorted(known))}")
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = apply_mapping(current, value, f"{where}.{key}")
        elif typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            changes[name] = tuple(value)
        elif isinstance(current, Path) or Path in typing.get_args(hints[name]):
            changes[name] = None if value is None else Path(value)
        else:
            changes[name] = value
        if not dataclasses.is_dataclass(current) and not fits(changes[name], hints[name]):
            raise PresetError(f"{where}: '{key}: {value}' is not a valid value (expected {describe(hints[name])})")
    return dataclasses.replace(base, **changes)


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from YAML) is of type ``hint``: the few kinds of option a run has."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is tuple:
        element = args[0] if args else Any
        return isinstance(value, tuple) and all(fits(item, element) for item in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def describe(hint: Any) -> str:
    """A type as a user reads it: ``one of standard, perturbed, dropout``, ``int``, ``a list of ...``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is tuple:
        return f"a list of {describe(args[0])}" if args else "a list"
    return "nothing (null)" if hint is type(None) else getattr(hint, "__name__", str(hint))


def load_preset(name: str, base: T) -> T:
    """``base`` with the preset ``name`` applied."""
    path = preset_path(name)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise PresetError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise PresetError(f"{path} must hold a mapping of option names to values")
    values.pop("description", None)
    return apply_mapping(base, values, str(path))
