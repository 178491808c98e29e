"""Trainer settings: one declaration each, resolved as documented, and the preset table of
docs/training.md says what the code does."""

import re
from pathlib import Path

import pytest

from unhype.families import FAMILIES
from unhype.settings import (
    DEFAULTED,
    PRESETS,
    SETTINGS,
    ConfigError,
    TrainingSettings,
    build_configs,
)
from unhype.trigger import TriggerSpec

TRAINING_DOC = Path(__file__).resolve().parent.parent / "docs" / "training.md"


def test_every_setting_is_a_field_with_its_default():
    settings = TrainingSettings()
    for setting in SETTINGS:
        assert getattr(settings, setting.name) == setting.default
        if setting.low is not None:
            assert setting.low <= setting.default <= setting.high, setting.name


def test_set_values_win_over_family_over_preset():
    settings = TrainingSettings(concepts="zebra", preset="explicit content").validate()
    assert settings.resolve("sd1")["rank"] == 1
    assert settings.resolve("flux")["rank"] == FAMILIES["flux"].training_defaults["rank"]
    settings.rank = 3
    assert settings.resolve("flux")["rank"] == 3


def test_configs_follow_the_preset():
    settings = TrainingSettings(concepts="tench -> fish\nchurch", preset="people").validate()
    net, config = build_configs(settings, "sd1", ["a dog", "church"],
                                TriggerSpec("clip-pooled", 768))
    people = PRESETS["people"]
    assert (net.rank, net.hidden, net.trajectory_length) == (people["rank"], 512, 300)
    assert config.steps == people["steps"] and config.learning_rate == people["learning_rate"]
    assert config.retain_learning_rate == people["retain_learning_rate"]
    assert [(c.name, c.anchor) for c in config.concepts] == [("tench", "fish"),
                                                             ("church", "a person")]
    assert config.retain_prompts == ["a dog"]  # an erased concept is never a retain prompt
    assert config.objective == "trajectory"


@pytest.mark.parametrize("name, value", [("steps", -1), ("learning_rate", 2.0), ("eta", 11.0),
                                         ("preset", "animals"), ("rank", 1.5)])
def test_out_of_range_values_are_refused(name, value):
    with pytest.raises(ConfigError, match=name):
        TrainingSettings(concepts="zebra", **{name: value}).validate()


def _documented_presets() -> dict[str, list[str]]:
    text = TRAINING_DOC.read_text(encoding="utf-8")
    table = text[text.index("| preset (authors' run) |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _number(text: str) -> float:
    return float(text)


@pytest.mark.parametrize("label, preset, family", [
    ("objects (Imagenette)", "objects", "sd1"),
    ("people (celebrities)", "people", "sd1"),
    ("explicit content (SD nudity)", "explicit content", "sd1"),
    ("custom (your templates)", "custom", "sd1"),
    ("Flux, any preset (Flux nudity)", "people", "flux"),
    ("proving ground (CPU world)", "custom", "proving-ground"),
])
def test_documented_preset_table_matches_the_code(label, preset, family):
    eta, rank, hidden, steps, rates, w_rm, w_rt = _documented_presets()[label][1:]
    values = TrainingSettings(concepts="x", preset=preset).validate().resolve(family)
    own = {**PRESETS[preset], **FAMILIES[family].training_defaults}
    expected = {"eta": eta, "rank": rank, "hidden": hidden, "steps": steps, "w_rm": w_rm,
                "w_rt": w_rt}
    keys = {"eta": "eta", "rank": "rank", "hidden": "hidden", "steps": "steps",
            "w_rm": "removal_weight", "w_rt": "retain_weight"}
    for cell, key in keys.items():
        if expected[cell] == "preset's":
            assert key not in FAMILIES[family].training_defaults, cell
        else:
            assert _number(expected[cell]) == values[key], (label, cell)
    removal, retention = (_number(x) for x in re.split(r"\s*/\s*", rates))
    assert (removal, retention) == (own["learning_rate"], own["retain_learning_rate"])


def test_defaulted_settings_are_numbers_that_default_to_zero():
    by_name = {s.name: s for s in SETTINGS}
    for name in DEFAULTED:
        assert by_name[name].default == 0, name


def test_compact_defaults_to_a_smaller_learning_rate_unless_set():
    from unhype.settings import COMPACT_LEARNING_RATE_SCALE, TrainingSettings

    paper = TrainingSettings(concepts="red").validate().resolve("proving-ground")
    compact = TrainingSettings(concepts="red", variant="compact").validate() \
        .resolve("proving-ground")
    for name in ("learning_rate", "retain_learning_rate"):
        assert compact[name] == pytest.approx(COMPACT_LEARNING_RATE_SCALE * paper[name])
    chosen = TrainingSettings(concepts="red", variant="compact", learning_rate=2e-3).validate()
    assert chosen.resolve("proving-ground")["learning_rate"] == 2e-3
