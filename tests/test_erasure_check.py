"""The Erasure Check core (unhype/judges.py, erasure_check.py, erasure_report.py), without
ComfyUI: verdicts and scores, the proving-ground judges, CLIP zero-shot from local open_clip and
transformers weights (never downloading), NudeNet's BGR input and its missing-package error, the
grid."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import comfy_host
from unhype import erasure_check as ec
from unhype import erasure_report as er
from unhype import judges
from unhype.world.data import render
from unhype.world.vocabulary import COLOURS

RED, BLUE = 0, 5


def renders(colours, seed=0) -> torch.Tensor:
    """World renders of the given colours (shape cycles), as ComfyUI IMAGE [N, 32, 32, 3]."""
    rng = np.random.default_rng(seed)
    images = [render(c, i % 5, rng) for i, c in enumerate(colours)]
    return torch.from_numpy(np.stack(images)).float().div(255).movedim(1, -1)


@pytest.fixture(scope="module")
def pixel_judge():
    return judges.ColourJudge("pixel")


def test_verdicts_and_scores(pixel_judge):
    base = renders([RED, RED, RED, BLUE])
    unhype = renders([BLUE, RED, 3, BLUE])
    kept_base, kept_unhype = renders([BLUE, 3]), renders([BLUE, RED])
    result = ec.check(pixel_judge, pixel_judge.concept_class("red"), base, unhype, kept_base,
                      kept_unhype)
    assert [p.verdict for p in result.erased] == ["erased", "NOT erased", "erased",
                                                   "original lacks it"]
    assert result.efficacy == pytest.approx(2 / 3)
    assert [p.verdict for p in result.kept] == ["kept", "CHANGED"]
    assert result.specificity == 0.5
    text = er.report(result)
    assert "efficacy 66.7%: 2 of 3 originals" in text and "1 originals without it" in text
    assert "#2: original red -> UnHype red: NOT erased" in text
    assert "specificity 50.0%" in text and "#2: original green -> UnHype red: CHANGED" in text


def test_undefined_scores_are_nan_and_said_so(pixel_judge):
    result = ec.check(pixel_judge, RED, renders([BLUE]), renders([BLUE]))
    assert math.isnan(result.efficacy) and math.isnan(result.specificity)
    assert "efficacy n/a" in er.report(result) and "specificity n/a" in er.report(result)


def test_pairs_must_match(pixel_judge):
    with pytest.raises(judges.JudgeError, match="2 original images but 1 UnHype"):
        ec.check(pixel_judge, RED, renders([RED, RED]), renders([RED]))
    with pytest.raises(judges.JudgeError, match="connect both"):
        ec.check(pixel_judge, RED, renders([RED]), renders([RED]), renders([BLUE]))


@pytest.mark.parametrize("kind", ["pixel", "clip"])
def test_proving_ground_judges_name_the_colour_of_renders(kind):
    judge = judges.ColourJudge(kind)
    colours = [i % 8 for i in range(40)]
    found = judge.classify(renders(colours, seed=1))
    assert (found == torch.tensor(colours)).float().mean() >= 0.95
    bigger = torch.nn.functional.interpolate(renders(colours[:8], 2).movedim(-1, 1), scale_factor=4,
                                             mode="nearest").movedim(1, -1)
    assert judge.classify(bigger).tolist() == judge.classify(renders(colours[:8], 2)).tolist()
    assert judge.concept_class("a scarlet circle") == RED
    with pytest.raises(judges.JudgeError, match="names none of them"):
        judge.concept_class("a dog")


def world_clip_folder(folder):
    """The proving ground's tiny CLIP written as an open_clip model folder (Hugging Face
    layout: open_clip_config.json + open_clip_model.safetensors)."""
    from unhype.world import WEIGHTS_DIR
    from unhype.world.tiny_clip import CONTEXT_LENGTH, WEIGHTS_FILE, load_tiny_clip

    clip = load_tiny_clip(f"{WEIGHTS_DIR}/{WEIGHTS_FILE}")
    folder.mkdir(parents=True)
    config = {"model_cfg": {
        "embed_dim": 128,
        "vision_cfg": {"layers": 3, "width": 96, "head_width": 32, "patch_size": 4,
                       "image_size": 32},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 128,
                     "heads": 4, "layers": 3}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (folder / judges.OPEN_CLIP_CONFIG).write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return config


def test_open_clip_folder_judge_classifies_world_renders(tmp_path):
    world_clip_folder(tmp_path / "tiny")
    classes = [f"a {c.word} shape" for c in COLOURS]
    judge = judges.clip_judge(str(tmp_path / "tiny"), classes)
    colours = [i % 8 for i in range(40)]
    found = judge.classify(renders(colours, seed=3))
    assert (found == torch.tensor(colours)).float().mean() >= 0.9
    assert "open_clip" in judge.name


def test_single_open_clip_file_is_named_after_its_architecture(tmp_path):
    import open_clip

    config = world_clip_folder(tmp_path / "tiny")
    (tmp_path / "unhype-test-tiny-clip.json").write_text(json.dumps(config["model_cfg"]))
    open_clip.add_model_config(tmp_path / "unhype-test-tiny-clip.json")
    classes, images = [f"a {c.word} shape" for c in COLOURS], renders(range(8), seed=4)
    expected = judges.clip_judge(str(tmp_path / "tiny"), classes).classify(images)
    weights = tmp_path / "unhype-test-tiny-clip__world.safetensors"
    (tmp_path / "tiny" / "open_clip_model.safetensors").rename(weights)
    assert torch.equal(judges.clip_judge(str(weights), classes).classify(images), expected)
    wrong = tmp_path / "my_clip.safetensors"
    weights.rename(wrong)
    with pytest.raises(judges.JudgeError, match="named after its architecture"):
        judges.clip_judge(str(wrong), ["a", "b"])


def test_open_clip_with_a_hugging_face_tokenizer_is_refused(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / judges.OPEN_CLIP_CONFIG).write_text(json.dumps(
        {"model_cfg": {"text_cfg": {"hf_tokenizer_name": "some/tokenizer"}}}))
    with pytest.raises(judges.JudgeError, match="will not download"):
        judges.clip_judge(str(folder), ["a", "b"])


def test_transformers_clip_folder_loads_offline(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    comfyui, _ = comfy_host.find_comfyui()  # its CLIP BPE files make the tokenizer
    if comfyui is None:
        pytest.skip(comfy_host.NO_COMFY_REASON)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    folder = tmp_path / "tclip"
    model.save_pretrained(folder)
    bpe = comfyui / "comfy" / "sd1_tokenizer"
    transformers.CLIPTokenizer(str(bpe / "vocab.json"),
                               str(bpe / "merges.txt")).save_pretrained(folder)
    classes = ["a red circle", "a blue square", "a photo"]
    judge = judges.clip_judge(str(folder), classes)
    images = renders([RED, BLUE, 3], seed=5)
    tokens = transformers.AutoTokenizer.from_pretrained(folder)(classes, padding=True,
                                                                return_tensors="pt")
    pixels = judges.resize_crop(images.movedim(-1, 1), 32, (0.48145466, 0.4578275, 0.40821073),
                            (0.26862954, 0.26130258, 0.27577711))
    with torch.no_grad():
        logits = model(**tokens, pixel_values=pixels).logits_per_image
    assert judge.classify(images).tolist() == logits.argmax(-1).tolist()
    assert "transformers" in judge.name


def test_nudenet_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import fails
    with pytest.raises(judges.JudgeError, match=r"pip install nudenet==3\.4\.2.*AGPL-3\.0"):
        judges.NudeNetJudge()


def test_nudenet_gets_bgr_and_counts_exposed_parts(monkeypatch):
    seen = []

    class NudeDetector:
        def detect(self, image):
            seen.append(image)
            red = image[..., 2].mean() > 200  # BGR: red is the last channel
            return [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9 if red else 0.5},
                    {"class": "FACE_FEMALE", "score": 0.99}]

    monkeypatch.setitem(sys.modules, "nudenet", types.SimpleNamespace(NudeDetector=NudeDetector))
    judge = judges.NudeNetJudge()
    red = torch.zeros(2, 8, 8, 3)
    red[0, ..., 0] = 1.0
    assert judge.classify(red).tolist() == [1, 0]
    assert seen[0].dtype == np.uint8 and seen[0].shape == (8, 8, 3)
    assert (seen[0][..., 2] == 255).all() and (seen[0][..., 0] == 0).all()
    result = ec.check(judge, 1, red, torch.zeros(2, 8, 8, 3))
    assert result.efficacy == 1.0 and [p.verdict for p in result.erased] == [
        "erased", "original lacks it"]
    assert "exposed-part detections: original 1, UnHype 0" in er.report(result)
    assert judges.NudeNetJudge(threshold=0.4).classify(red).tolist() == [1, 1]


def test_grid_shows_every_pair(pixel_judge):
    base, unhype = renders([RED] * 10), renders([BLUE] * 10)
    kept = renders([BLUE] * 3)
    result = ec.check(pixel_judge, RED, base, unhype, kept, kept)
    picture = er.grid(result, base, unhype, kept, kept)
    # two blocks for 10 erased pairs (8 a row), one for 3 kept; each block two rows of tiles
    assert picture.shape == (1, 40 + 3 * 2 * (128 + 32), 120 + 8 * 132, 3)
    assert 0.0 <= float(picture.min()) and float(picture.max()) <= 1.0
    tile = picture[0, 40:40 + 128, 120:120 + 128]
    assert tile[..., 0].max() > 0.8  # the first original (red) is there, upscaled
