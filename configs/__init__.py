"""Load a YAML config plus `key.sub=value` overrides into the typed `Config`.

Every problem (missing file, bad YAML, unknown key, wrong type, bad value) becomes one
`ConfigError` whose message names the file, line and key, so the CLI can print it without a traceback.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import ValidationError

from configs.schema import Config

CONFIG_DIR = Path(__file__).resolve().parent
LOCAL = CONFIG_DIR / "local.yaml"


class ConfigError(ValueError):
    """A config that cannot be used; the message is meant for the user as it is."""


def load_config(path: str | Path | None = LOCAL, overrides: Sequence[str] = ()) -> Config:
    """Read `path` (None: defaults only), apply `overrides` such as `task.max_steps=4`, validate."""
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data, lines = _read_yaml(Path(path))
    override_keys = set()
    for item in overrides:
        key, value = _parse_override(item)
        _set_nested(data, key, value, item)
        override_keys.add(key)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            # An item of a list (`budgets.0`) is found through the key that holds it.
            holders = [".".join(key.split(".")[:n]) for n in range(key.count(".") + 1, 0, -1)]
            if any(h in override_keys for h in holders):
                where = "command-line override"
            else:
                where = next((f"{source}:{lines[h]}" for h in holders if h in lines), source)
            problems.append(f"{where}: {key}: {what}")
        raise ConfigError("\n".join(problems)) from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` plus trailing `key.sub=value` overrides, shared by every command that runs a job."""
    parser.add_argument("--config", default=str(LOCAL), help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override a config value")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(data).__name__}")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return data, lines


def _key_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    """Map each dotted key to its 1-based line, so errors can point into the file."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _key_lines(value_node, f"{key}.", out)


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected the form key.sub=value")
    try:
        return key, yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value is not valid YAML") from None


def _set_nested(data: dict[str, Any], key: str, value: Any, item: str) -> None:
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parents[: i + 1])} is a value, not a section")
        node = child
    node[leaf] = value
