"""The headless trainer's config: the Trainer node's settings plus where the model and ComfyUI
are, read from TOML or JSON and checked (pure: no ComfyUI, no import machinery; the launch is
unhype/headless.py). Every field is in workflows/train_config.example.toml.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .choices import PROVING_GROUND
from .settings import SETTINGS, ConfigError, TrainingSettings


@dataclass
class HeadlessConfig:
    settings: TrainingSettings
    model: str  # a single-file checkpoint, or PROVING_GROUND
    comfyui_path: str | None = None
    output: str | None = None  # folder of the final file
    checkpoint_dir: str | None = None  # folder of the training checkpoints
    device: str = "auto"  # auto / cpu / gpu


HEADLESS_FIELDS = {"model": str, "comfyui_path": str, "output": str, "checkpoint_dir": str,
                   "device": str}
DEVICES = ("auto", "cpu", "gpu")
RENAMED = {"checkpoint": "model"}  # old key -> new key: an old config gets a one-line answer
_TEXT_FIELDS = {s.name for s in SETTINGS if s.multiline}  # a string or a list of strings


def parse_config(data: dict, source: str = "config") -> HeadlessConfig:
    """Validate a config mapping: unknown keys, missing fields and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a table / object of settings")
    for old, new in RENAMED.items():
        if old in data:
            raise ConfigError(f"{source}: the key {old!r} is now {new!r} (the model to train on)")
    types = {setting.name: setting.kind for setting in SETTINGS}
    known = set(types) | set(HEADLESS_FIELDS)
    unknown = sorted(set(data) - known)
    problems = []
    if unknown:
        hints = [f"{key!r}: did you mean {close[0]!r}?" for key in unknown
                 if (close := difflib.get_close_matches(key, known, 1))]
        problems.append(f"unknown keys {unknown}" + (f" ({', '.join(hints)})" if hints else "")
                        + f"; known keys are {sorted(known)}")
    for required in ("model", "concepts"):
        if required not in data or data[required] in ("", [], None):
            problems.append(f"missing required key {required!r}")
    values = {}
    for key, value in data.items():
        if key in unknown:
            continue
        expected = HEADLESS_FIELDS.get(key) or types[key]
        if key in _TEXT_FIELDS and isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                problems.append(f"{key}: a list must hold strings only")
                continue
            value = "\n".join(value)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is int and isinstance(value, bool) or not isinstance(value, expected):
            problems.append(f"{key}: expected {expected.__name__}, got {type(value).__name__} "
                            f"{value!r}")
            continue
        values[key] = value
    if problems:
        raise ConfigError(f"{source}:\n  " + "\n  ".join(problems))
    if values.get("device", "auto") not in DEVICES:
        raise ConfigError(f"{source}: device must be one of {list(DEVICES)}")
    settings = TrainingSettings(**{k: v for k, v in values.items() if k in types})
    try:
        settings.validate()
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return HeadlessConfig(settings, values["model"], values.get("comfyui_path"),
                          values.get("output"), values.get("checkpoint_dir"),
                          values.get("device", "auto"))


def load_config(path: str | os.PathLike) -> HeadlessConfig:
    """Read a .toml or .json config and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except (ValueError, json.JSONDecodeError) as error:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
                          f"{error}") from None
    config = parse_config(data, str(path))
    base = path.parent
    for name in ("model", "output", "checkpoint_dir", "comfyui_path"):
        value = getattr(config, name)
        if value and value != PROVING_GROUND:  # relative paths: relative to the config file
            setattr(config, name, str((base / Path(value).expanduser()).resolve()))
    return config
