"""Headless training config: TOML/JSON parsing and validation (no ComfyUI needed)."""

import json
from pathlib import Path

import pytest

from unhype.headless import find_comfyui
from unhype.headless_config import ConfigError, TrainingSettings, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "workflows" / "train_config.example.toml"


def write(tmp_path, text, name="cfg.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_config_with_lists_and_relative_paths(tmp_path):
    path = write(tmp_path, """
model = "models/sd15.safetensors"
output = "out"
concepts = ["tench -> fish", "church"]
retain_prompts = "a dog\\na cat"
steps = 10
learning_rate = 1   # an int where a float is expected is fine
save_name = "objects"
""")
    config = load_config(path)
    assert config.model == str((tmp_path / "models" / "sd15.safetensors").resolve())
    assert config.output == str((tmp_path / "out").resolve())
    assert config.settings.concepts == "tench -> fish\nchurch"
    assert config.settings.retain_prompts == "a dog\na cat"
    assert config.settings.steps == 10 and config.settings.learning_rate == 1.0
    assert config.settings.preset == "objects" and config.device == "auto"


def test_json_config(tmp_path):
    path = write(tmp_path, json.dumps({"model": "/m.safetensors", "concepts": "zebra",
                                       "objective": "direct", "variant": "compact"}),
                 "cfg.json")
    config = load_config(path)
    assert config.model == "/m.safetensors"
    assert config.settings.objective == "direct" and config.settings.variant == "compact"


@pytest.mark.parametrize("data, message", [
    ({"model": "a", "concepts": "x", "stpes": 5}, r"unknown keys \['stpes'\]"),
    ({"concepts": "x"}, "missing required key 'model'"),
    ({"model": "a"}, "missing required key 'concepts'"),
    ({"model": "a", "concepts": []}, "missing required key 'concepts'"),
    ({"model": "a", "concepts": "x", "steps": "ten"}, "steps: expected int, got str"),
    ({"model": "a", "concepts": "x", "steps": True}, "steps: expected int"),
    ({"model": "a", "concepts": "x", "steps": -5}, "steps: must be between 0 and"),
    ({"model": "a", "concepts": "x", "learning_rate": 1e6},
     r"learning_rate: must be between 0 and 1, got 1000000.0"),
    ({"model": "a", "concepts": "x", "retain_weight": -1.0}, "retain_weight: must be"),
    ({"model": "a", "concepts": "-> fish"}, "concepts: line 1: no concept before"),
    ({"model": "a", "concepts": "x", "preset": "animals"}, "preset: 'animals'"),
    ({"model": "a", "concepts": "x", "objective": "esd"}, "objective: 'esd'"),
    ({"model": "a", "concepts": "x", "target_preset": "sd-everything"}, "target_preset"),
    ({"model": "a", "concepts": "x", "preset": "custom", "templates": ["no slot"]},
     "templates: each needs"),
    ({"model": "a", "concepts": ["x", 3]}, "concepts: a list must hold strings"),
    ({"model": "a", "concepts": "x", "device": "tpu"}, "device must be one of"),
    ({"checkpoint": "a", "concepts": "x"}, r"^cfg: the key .checkpoint. is now .model. \(the"),
])
def test_invalid_configs_fail_with_clear_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "cfg")


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "model = "))
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(write(tmp_path, "{", "cfg.json"))
    with pytest.raises(ConfigError, match="top level"):
        load_config(write(tmp_path, "[1, 2]", "cfg.json"))


def test_settings_defaults_validate():
    settings = TrainingSettings(concepts="zebra").validate()
    assert settings.objective == "trajectory" and settings.builtin_retain


def test_example_config_is_valid():
    config = load_config(EXAMPLE)
    assert config.settings.concepts.strip()
    assert config.model.endswith(".safetensors")


def test_find_comfyui_reports_what_it_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    with pytest.raises(ConfigError, match="no ComfyUI checkout found"):
        find_comfyui()
    fake = tmp_path / "ComfyUI"
    (fake / "comfy").mkdir(parents=True)
    (fake / "main.py").write_text("")
    (fake / "comfy" / "cli_args.py").write_text("")
    assert find_comfyui(str(fake)) == fake.resolve()


def test_core_does_not_import_comfy():
    """unhype/ stays host-free: the headless module imports ComfyUI only when training."""
    core = Path(__file__).resolve().parent.parent / "unhype"
    for path in core.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import comfy", "from comfy")), f"{path}: {line}"
