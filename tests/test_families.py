"""The family table (unhype/families.py): every entry complete and consistent with the rest of the
pack, the one resolver of "0 means the family's value", and no second family table anywhere."""

import ast
import re
from pathlib import Path

import pytest

from unhype.families import (
    FAMILIES,
    RUN_VALUES,
    UnknownFamilyError,
    checkpoint_labels,
    family,
    per_family,
    pooled_name,
    resolve,
)
from unhype.settings import COMMON, DEFAULTED, PRESETS, SETTINGS, TrainingSettings
from unhype.targets import TARGET_PRESETS

ROOT = Path(__file__).resolve().parent.parent
SETTING = {s.name: s for s in SETTINGS}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_entry_is_complete_and_consistent(name):
    entry = FAMILIES[name]
    assert entry.name == name
    assert entry.target_preset in TARGET_PRESETS
    for text in (entry.label, entry.pooled_encoder, entry.modelspec_architecture, entry.licence):
        assert isinstance(text, str) and text.strip(), name
    assert entry.guidance > 0 and entry.pooled_width > 0 and entry.latent_patch >= 1
    assert all(isinstance(c, str) and c for c in entry.comfy_configs)
    for key, value in entry.training_defaults.items():
        # a key the resolver knows: a common value or a setting where 0 means the default
        assert key in COMMON or key in DEFAULTED, (name, key)
        setting = SETTING.get(key)
        if setting is not None:
            assert setting.low < value <= setting.high, (name, key, value)
    # every run value is a Trainer setting whose own default leaves it to the family
    for key in RUN_VALUES:
        assert SETTING[key].default in (0, "auto"), key
    assert SETTING["resolution"].low <= entry.resolution <= SETTING["resolution"].high
    assert SETTING["guidance"].low <= entry.guidance <= SETTING["guidance"].high


def test_names_labels_and_comfy_classes_are_unique():
    entries = list(FAMILIES.values())
    assert len({f.label for f in entries}) == len(entries)
    assert len({f.modelspec_architecture for f in entries}) == len(entries)
    classes = [c for f in entries for c in f.comfy_configs]
    assert len(set(classes)) == len(classes)


def test_the_proving_ground_entry_is_the_world():
    from unhype.choices import PROVING_GROUND
    from unhype.world import tiny_clip

    world = family(PROVING_GROUND)
    assert world.pooled_width == tiny_clip.TEXT_WIDTH
    assert world.comfy_configs == ()  # its model config names it: nodes/comfy_world.py


def test_embedding_sources_are_what_network_files_record():
    assert family("sd1").embedding_source == "CLIP-L pooled (final-layer-normed end-of-text state)"
    assert family("flux").embedding_source == family("sd1").embedding_source
    assert family("sd2").embedding_source == "OpenCLIP-H pooled (projected)"
    assert family("sdxl").embedding_source == "CLIP-G pooled (projected)"
    assert pooled_name(768) == "CLIP-L pooled embeddings (SD1.x / Flux.1)"
    assert pooled_name(1280) == "CLIP-G pooled embeddings (SDXL)"
    assert pooled_name(64) == "pooled embeddings"


def test_a_family_without_a_clip_pooled_vector_reads_its_conditioning():
    """Flux.2 Klein (Qwen3, no CLIP): its networks default to the cond-pooled trigger, its files
    name that source, no pooled-vector message names it, and the Trainer's tooltips and
    family list name it (it is trained)."""
    klein = family("flux2")
    assert (klein.clip_pooled, klein.trains, klein.trigger) == (False, True, "cond-pooled")
    assert klein.embedding_source == klein.trigger_source("cond-pooled", 2 * 7680)
    assert "7680-d rows" in klein.embedding_source
    assert pooled_name(7680) == "pooled embeddings"
    assert "1024 SDXL, Flux.2 Klein" in per_family("resolution")
    assert "Flux.2 Klein" in checkpoint_labels(trains_only=True)
    for entry in FAMILIES.values():
        assert entry.clip_pooled or entry.trigger == "cond-pooled", entry.name


def test_a_family_without_a_pooled_vector_is_named_for_what_it_reads():
    """Wan (umT5, no pooled vector): its networks read the conditioning, no width is called
    its "pooled embeddings", and the Trainer's lists and tooltips name it (it is trained)."""
    wan = family("wan")
    assert wan.trigger == "cond-pooled" and wan.trains and not wan.clip_pooled
    assert wan.embedding_source == "cond-pooled: mean and max of the text conditioning's " \
                                   "4096-d rows"
    assert pooled_name(4096) == "pooled embeddings"
    assert checkpoint_labels() == ["SD1.x", "SD2.x", "SDXL", "Flux.1", "Flux.2 Klein",
                                   "Wan 2.1/2.2 T2V", "Qwen-Image", "Z-Image"]
    assert checkpoint_labels(trains_only=True) == checkpoint_labels()
    assert "480 Wan 2.1/2.2 T2V" in per_family("resolution")
    assert "5 Wan 2.1/2.2 T2V" in per_family("guidance")


def test_qwenimage_reads_its_conditioning_and_its_txt_in_through_txt_norm():
    """Qwen-Image (Qwen2.5-VL-7B, no pooled vector): cond-pooled 3584-d rows, CFG 4 at 1328 in
    2x2 patches, trained (the Trainer's tooltips list its values); its txt_in reads
    txt_norm(conditioning), so the bake does not bake its cap, where Flux's txt_in reads the
    conditioning itself."""
    qwen = family("qwenimage")
    assert (qwen.trigger, qwen.clip_pooled, qwen.trains) == ("cond-pooled", False, True)
    assert "3584-d rows" in qwen.embedding_source
    assert (qwen.resolution, qwen.guidance, qwen.distilled, qwen.latent_patch) == (
        1328, 4.0, False, 2)
    assert re.search(qwen.embedded_prompt_targets, "txt_in")
    assert not family("flux2").embedded_prompt_targets
    assert not family("flux").embedded_prompt_targets
    assert "1328 Qwen-Image" in per_family("resolution")
    assert "4 Qwen-Image" in per_family("guidance")


def test_zimage_reads_its_conditioning_and_every_target_through_the_model():
    """Z-Image (Qwen3-4B, no pooled vector): cond-pooled 2560-d rows, Turbo's CFG 1 at 1024 in
    2x2 patches (distilled), trained; cap_embedder.1 reads its RMSNorm and the context
    refiner the embedded caption, so the bake bakes no cap on any of its preset's targets."""
    zimage = family("zimage")
    assert (zimage.trigger, zimage.clip_pooled, zimage.trains) == ("cond-pooled", False, True)
    assert "2560-d rows" in zimage.embedding_source
    assert (zimage.resolution, zimage.guidance, zimage.distilled, zimage.latent_patch) == (
        1024, 1.0, True, 2)
    assert zimage.comfy_configs == ("ZImage",) and not zimage.comfy_subclasses
    for name in ("cap_embedder.1", "context_refiner.0.attention.qkv",
                 "context_refiner.1.feed_forward.w2"):
        assert re.search(zimage.embedded_prompt_targets, name)
    assert not re.search(zimage.embedded_prompt_targets, "layers.0.attention.qkv")
    assert "1024 SDXL, Flux.2 Klein, Z-Image" in per_family("resolution")
    assert "1 Flux.2 Klein, Z-Image" in per_family("guidance")


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(UnknownFamilyError) as caught:
        family("sd9")
    message = str(caught.value)
    assert "'sd9'" in message and all(name in message for name in FAMILIES)


def test_resolve_takes_set_values_then_the_family_then_below():
    below = {"rank": 6, "eta": 0.3, "steps": 6000}
    values = resolve("flux", {"rank": 0, "eta": 2.0, "target_preset": "auto", "resolution": None},
                     below)
    assert values["rank"] == family("flux").training_defaults["rank"]  # 0: the family's
    assert values["eta"] == 2.0  # set
    assert values["steps"] == 6000  # the family has none: below's
    assert values["target_preset"] == "flux-value-out" and values["resolution"] == 512
    assert values["guidance"] == 3.5


def test_settings_resolve_the_run_values_through_the_family():
    """The Trainer's target preset "auto", resolution 0 and guidance 0 are the family's."""
    auto = TrainingSettings(concepts="x").validate()
    for name, entry in FAMILIES.items():
        values = auto.resolve(name)
        assert (values["target_preset"], values["resolution"], values["guidance"]) == (
            entry.target_preset, entry.resolution, entry.guidance)
    chosen = TrainingSettings(concepts="x", target_preset="sd-cross-v", resolution=256,
                              guidance=5.0).validate()
    values = chosen.resolve("sdxl")
    assert (values["target_preset"], values["resolution"], values["guidance"]) == (
        "sd-cross-v", 256, 5.0)
    assert set(PRESETS["objects"]) <= set(values)


def _family_strings(tree: ast.AST) -> list[tuple[int, str]]:
    spelled = set(FAMILIES)
    spelled |= {c for f in FAMILIES.values() for c in f.comfy_configs}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in spelled]


def test_no_other_module_spells_a_family():
    """A family's name or ComfyUI class written anywhere else in the pack's code (a dict keyed
    "sdxl", a set of CLIP families, `== "flux"`) would be a second family table. choices.py holds
    the proving ground's name, also the headless config's `model` value; the table takes it."""
    allowed = {ROOT / "unhype" / "families.py", ROOT / "unhype" / "choices.py"}
    found = []
    for folder in ("unhype", "nodes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path not in allowed:
                tree = ast.parse(path.read_text(encoding="utf-8"))
                found += [f"{path.relative_to(ROOT)}:{line} {value!r}"
                          for line, value in _family_strings(tree)]
    assert not found, "family facts outside unhype/families.py:\n" + "\n".join(found)
