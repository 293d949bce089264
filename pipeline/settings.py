"""Typed configs from plain data and back: config files, presets, `--set key.path=value`.

A *settings* dict maps section names to the plain data of one typed config each
(`{"extract": {...}, "label": {...}, "runtime": {...}}`); `build` turns one section's data
into its dataclass, strictly: an unknown key, a value of the wrong type or out of range is a
ValueError whose message starts with the dotted path of the field ("label.discovery.max_objects:
must be >= 1, got 0"), raised before any work. Files are YAML or JSON; a run summary is read
as the settings it records, so feeding one back reproduces its digest.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import fsspec
import yaml

# Named presets shipped with the package: `--config NAME` finds configs/NAME.yaml.
PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"

# Keys of a run summary (jobs write them to OUT/runs/) that hold a section's settings.
SUMMARY_KEYS = {"label_config": "label"}


def build(cls: type, data: Any, where: str):
    """Plain data (a dict, as YAML/JSON hold it) -> an instance of the dataclass `cls`. Fields
    left out take their defaults; nested dataclasses, tuples and Optional fields are converted
    by the field's type. ValueError naming `where`.FIELD for an unknown key or a bad value."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a mapping of settings, got {data!r}")
    data = without_removed(data, getattr(cls, "REMOVED_SETTINGS", {}), where)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    values = {}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"{where}.{key}: unknown setting (known: {', '.join(known)})")
        values[key] = _convert(hints[key], value, f"{where}.{key}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}.{missing[0]}: needs a value (no default)")
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(_named(str(exc), where)) from None


def without_removed(data: dict, removed: dict, where: str) -> dict:
    """Stored settings -> the same without the settings removed since they were stored
    (`removed`: name -> the value at which it was off, a config class's REMOVED_SETTINGS). One
    held at that value is dropped: a config stored before the removal (a run summary, a shard's
    or cluster.json's config) still loads and means what it meant. At any other value it asked
    for what no longer exists: ValueError naming `where`.NAME."""
    for key in sorted(removed.keys() & data.keys()):
        if data[key] != removed[key]:
            raise ValueError(f"{where}.{key}: this setting was removed (measured, not adopted: see the docs' "
                             f"results); a stored config may hold it only at {removed[key]!r} (off), got {data[key]!r}")
    return {k: v for k, v in data.items() if k not in removed}


def _named(message: str, where: str) -> str:
    """A config's own check message under its full path: the checks name their field from
    their own config down ("discovery.max_objects: ..."), `where` is the path to that config
    ("label.discovery"): -> "label.discovery.max_objects: ..."."""
    parts = where.split(".")
    for i in range(len(parts)):
        if message.startswith(".".join(parts[i:]) + "."):
            return ".".join(parts[:i] + [message])
    return f"{where}: {message}"


def _convert(hint, value, where: str):
    """One field's value -> its type (bool stays bool, int is no float, tuple from a list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else
                         f"{where}: must be {' or '.join(_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        return build(hint, {} if value is None else value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be text, got {value!r}")
        return value
    return value


def _name(hint) -> str:
    return {int: "a whole number", float: "a number", str: "text", bool: "true or false",
            type(None): "none"}.get(hint, getattr(hint, "__name__", str(hint)))


def plain(config) -> dict:
    """A typed config -> its plain data, every field (what --dry-run prints)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def leaf_fields(cls: type, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    """(dotted path, type, default) of every setting of `cls`, nested configs walked (Optional
    ones too: setting one of their fields turns them on)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint, path = hints[f.name], f"{prefix}.{f.name}"
        nested = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if nested:
            yield from leaf_fields(nested[0], path)
            continue
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        yield path, hint, default


def parse_value(text: str):
    """A value as typed on the command line -> plain data, read as YAML: 3, 0.5, true, none,
    [20, 10], mean."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-05 as text
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_assignment(text: str) -> tuple[str, str]:
    """"section.field.sub=value" -> (path, the value's text, read by the field's type later);
    ValueError for anything else."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip() or "." not in path:
        raise ValueError(f"--set: expected SECTION.FIELD=VALUE (e.g. extract.eigen.k=10), got {text!r}")
    return path.strip(), value


def set_path(settings: dict, path: str, value) -> None:
    """settings[a][b][c] = value for path "a.b.c", making the mappings on the way."""
    *parents, last = path.split(".")
    node = settings
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


def merged(base: dict, override: dict) -> dict:
    """A deep merge: mappings merge key by key, anything else in `override` replaces."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_settings(name: str, sections: dict[str, str]) -> tuple[dict, bool]:
    """A config file, preset name or run summary -> (its settings dict, section -> data; whether
    it is a run summary, whose sections are in their stored form: to_dict's).

    `name`: a path or fsspec URL of a YAML/JSON file, or the name of a preset in configs/.
    `sections`: the section names a run summary's "config" block may stand for, as
    {"config": "extract"} for a summary of `extract` or `label`."""
    uri = name
    if not any(c in name for c in "/\\:") and not name.endswith((".yaml", ".yml", ".json")):
        uri = str(PRESETS_DIR / f"{name}.yaml")
        if not Path(uri).exists():
            raise ValueError(f"--config {name}: no such file or preset (presets: {', '.join(preset_names())})")
    try:
        with fsspec.open(uri, "r") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"--config {name}: no such file") from None
    try:
        data = json.loads(text) if uri.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None) or getattr(exc, "lineno", None)
        line = f" (line {where.line + 1})" if hasattr(where, "line") else f" (line {where})" if where else ""
        raise ValueError(f"--config {name}: not valid {'JSON' if uri.endswith('.json') else 'YAML'}{line}") from None
    if data is None:
        return {}, False
    if not isinstance(data, dict):
        raise ValueError(f"--config {name}: must hold a mapping of sections, got {type(data).__name__}")
    if "config_digest" in data and isinstance(data.get("config"), dict):  # a run summary
        return {section: data[key] for key, section in {**sections, **SUMMARY_KEYS}.items()
                if isinstance(data.get(key), dict)}, True
    return data, False


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def to_yaml(settings: dict) -> str:
    return yaml.safe_dump(settings, sort_keys=False, default_flow_style=None, width=100)
