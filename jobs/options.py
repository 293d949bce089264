"""Command-line options made from the typed configs: the flags a command shows, `--config`,
`--set` and `--dry-run`.

Each command names the config sections it runs with (`Options.sections`: section -> dataclass)
and the few settings it shows as flags (`Flag`: one dotted path each). Every other setting is
reached by `--set SECTION.FIELD=VALUE` or a config file. Precedence: the dataclasses'
defaults < `--config` files and presets (in the order given) < flags and `--set`.
"""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import dataclass
from typing import Any

from pipeline.settings import (build, leaf_fields, merged, parse_assignment, parse_value, plain, preset_names,
                               read_settings, set_path, to_yaml)

# Every section a config file or preset may hold: a preset carries the settings of a whole
# pipeline (extract, then cluster), and each command takes the sections it runs with.
KNOWN_SECTIONS = ("extract", "label", "runtime", "pseudo_labels", "matte", "detector")

_UNSET = object()


@dataclass(frozen=True)
class Flag:
    """A setting shown as a flag: `--NAME VALUE` sets `path` (section.field...)."""

    path: str
    help: str
    name: str | None = None  # default: the last part of the path, "_" -> "-"
    metavar: str | None = None
    choices: tuple | None = None
    # A switch: the flag takes no value and sets this one (e.g. {} turns an optional section on).
    const: Any = _UNSET

    @property
    def option(self) -> str:
        return self.name or "--" + self.path.rsplit(".", 1)[-1].replace("_", "-")


class Options:
    """A command's config sections and flags: adds them to a parser, and makes the configs
    from parsed arguments."""

    def __init__(self, sections: dict[str, type], flags: list[Flag]):
        self.sections, self.flags = sections, flags
        # A run summary's "config" block holds the first section (extract's and label's: extract).
        self.summary_sections = {"config": next(iter(sections))}
        self.fields = {path: (hint, default) for name, cls in sections.items()
                       for path, hint, default in leaf_fields(cls, name)}
        for flag in flags:
            if flag.path not in self.fields and flag.const is _UNSET:
                raise ValueError(f"flag {flag.option}: {flag.path} is not a setting of {list(sections)}")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "settings", "every setting has a default; --config and --set reach those without a flag "
                        "(--dry-run prints them all); flags and --set override files")
        group.add_argument("--config", action="append", default=[], metavar="FILE|PRESET",
                           help="YAML/JSON settings, a run summary (OUT/runs/*.json: reproduces its digest) "
                                f"or a preset ({', '.join(preset_names())}); repeat to layer them")
        group.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="set_",
                           help=f"any setting, e.g. extract.eigen.k=10 (sections: {', '.join(self.sections)})")
        group.add_argument("--dry-run", action="store_true",
                           help="print the merged settings and their digest, then exit without work")
        groups = {name: parser.add_argument_group(f"{name} settings") for name in self.sections}
        for flag in self.flags:
            group = groups[flag.path.split(".")[0]]
            kwargs: dict = {"dest": _dest(flag), "default": argparse.SUPPRESS}
            if flag.const is not _UNSET:
                kwargs.update(action="store_const", const=flag.const, help=flag.help.replace("%", "%%"))
                group.add_argument(flag.option, **kwargs)
                continue
            hint, default = self.fields[flag.path]
            shown = "none" if default is None else json.dumps(default) if isinstance(default, bool) else default
            kwargs["help"] = f"{flag.help} (default: {shown})".replace("%", "%%")
            if hint is bool:
                group.add_argument(flag.option, action=argparse.BooleanOptionalAction, **kwargs)
            else:
                metavar = flag.metavar or (None if flag.choices else flag.path.rsplit(".", 1)[-1].upper())
                group.add_argument(flag.option, metavar=metavar, choices=flag.choices, **kwargs)

    def settings(self, args: argparse.Namespace, defaults: dict | None = None) -> dict:
        """The merged plain settings of the parsed arguments: the command's `defaults` ({path:
        value}, over the dataclasses'), then files, then flags, then --set."""
        data: dict = {}
        for path, value in (defaults or {}).items():
            set_path(data, path, value)
        for name in getattr(args, "config", []) or []:
            stored, is_summary = read_settings(name, self.summary_sections)
            if is_summary:  # stored form (fields left out at old defaults) -> every field
                stored = {k: plain(self._from_stored(k, v)) for k, v in stored.items() if k in self.sections}
            data = merged(data, stored)
        unknown = [s for s in data if s not in KNOWN_SECTIONS]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown section (known: {', '.join(KNOWN_SECTIONS)})")
        data = {k: v for k, v in data.items() if k in self.sections}
        for flag in self.flags:
            if hasattr(args, _dest(flag)):
                value = getattr(args, _dest(flag))
                if flag.const is _UNSET and isinstance(value, str):
                    value = self.value(flag.path, value)
                if isinstance(value, dict):  # a switch's {}: a copy, or --set would fill the flag's own
                    value = merged(value, data_at(data, flag.path))
                set_path(data, flag.path, value)
        for text in getattr(args, "set_", []) or []:
            path, value = parse_assignment(text)
            if path.split(".")[0] not in self.sections:
                raise ValueError(f"--set {path}: unknown section {path.split('.')[0]!r} "
                                 f"(this command's: {', '.join(self.sections)})")
            set_path(data, path, self.value(path, value))
        return data

    def _from_stored(self, section: str, data: dict):
        cls = self.sections[section]
        try:
            return cls.from_dict(data) if hasattr(cls, "from_dict") else build(cls, data, section)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{section}: the run summary's settings do not load: {exc}") from None

    def value(self, path: str, text: str):
        """A value typed on the command line for `path` -> plain data (text stays text for a
        text setting; anything else is read as YAML)."""
        hint = self.fields.get(path, (None, None))[0]
        if hint is str or set(typing.get_args(hint)) == {str, type(None)}:  # text, or text and none
            return None if hint is not str and text.strip().lower() in ("none", "null") else text
        if typing.get_origin(hint) is tuple:
            return parse_value(text if text.lstrip().startswith("[") else f"[{text}]")
        return parse_value(text)

    def configs(self, args: argparse.Namespace, defaults: dict | None = None) -> dict:
        """section -> its typed config. A bad file, key or value exits with status 2 and one line
        naming the setting (jobs.cli prints it), before any listing, lease or write."""
        try:
            data = self.settings(args, defaults)
            return {name: build(cls, data.get(name, {}), name) for name, cls in self.sections.items()}
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None


def dry_run(configs: dict, digests: dict[str, str]) -> int:
    """--dry-run: print every setting (defaults included) and the digests they make."""
    print(to_yaml({name: plain(cfg) for name, cfg in configs.items()}), end="")
    for what, digest in digests.items():
        print(f"# {what} digest: {digest}")
    return 0


def data_at(data: dict, path: str) -> dict:
    """The mapping at `path` in plain settings, or {} (a switch keeps what a file set there)."""
    for key in path.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _dest(flag: Flag) -> str:
    return "opt_" + flag.path.replace(".", "__")


def write_summary(path: str | None, summary: dict) -> None:
    """--summary FILE: the run summary's JSON there too."""
    if path:
        import fsspec

        with fsspec.open(path, "w") as f:
            json.dump(summary, f, indent=2)

