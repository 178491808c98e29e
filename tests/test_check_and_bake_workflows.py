"""workflows/erasure_check.json and workflows/bake_lora.json in a real ComfyUI server (CPU), on
the proving ground.

A network that erases red is trained here with the Trainer's proving-ground defaults (150 direct
steps erased red in the world's own DDIM sampler but not in ComfyUI's euler once the anchor kept
the rest of the prompt), and put in the server's models/unhype under the name the
workflows load. The check's graph (original and UnHype branches, same prompts and seeds) runs
with the pixel judge; then the check alone runs again (the images come from ComfyUI's cache)
with CLIP zero-shot on the world's tiny CLIP, put in the server's models/clip_judge as an
open_clip model folder. The bake graph writes the red prompt's LoRA to models/loras; sampled
through LoraLoaderModelOnly it gives the images Apply Dynamic LoRA gives.
"""

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _workflow_api import to_api, validate
from test_erasure_check import world_clip_folder

pytestmark = [pytest.mark.host, pytest.mark.slow]

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
WORKFLOW = WORKFLOWS / "erasure_check.json"


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def api(comfy_server, object_info):
    from unhype.fileformat import save_unhype
    from unhype.world import load_world
    from unhype.world.erasure import ErasureTask, train_unhype

    workflow = json.loads(WORKFLOW.read_text())
    assert validate(workflow, object_info) == []
    started = time.monotonic()
    network, _ = train_unhype(load_world(), ErasureTask(["red"]))  # the Trainer's defaults
    print(f"\ntrained in {time.monotonic() - started:.1f}s")
    graph = to_api(workflow, object_info)
    loader = next(n for n in graph.values() if n["class_type"] == "UnHypeLoader")
    save_unhype(str(comfy_server.models_dir / "unhype" / loader["inputs"]["unhype_name"]),
                network)
    return graph


def scores(text: str) -> tuple[float, float]:
    efficacy = re.search(r"efficacy ([\d.]+)%: (\d+) of (\d+)", text)
    specificity = re.search(r"specificity ([\d.]+)%: (\d+) of (\d+)", text)
    assert efficacy and specificity, text
    assert int(efficacy[3]) >= 7 and int(specificity[3]) == 8  # the base paints red (blue)
    return float(efficacy[1]) / 100, float(specificity[1]) / 100


def test_workflow_checks_the_erasure(comfy_server, api):
    started = time.monotonic()
    outputs = comfy_server.run(api, budget=600)
    print(f"workflow ran in {time.monotonic() - started:.1f}s")
    check = next(k for k, n in api.items() if n["class_type"] == "UnHypeErasureCheck")
    report = outputs[check]["text"][0]
    print(report)
    assert "judge proving ground (pixel colour); erased concept: red" in report
    efficacy, specificity = scores(report)
    assert efficacy >= 0.875 and specificity == 1.0
    shown = next(o["text"][0] for k, o in outputs.items() if api[k]["class_type"] == "PreviewAny")
    assert shown == report
    saved = next(o["images"] for k, o in outputs.items() if api[k]["class_type"] == "SaveImage")
    grid = Image.open(comfy_server.output_path(saved[0]))
    assert grid.size == (120 + 8 * 132, 40 + 2 * 2 * (128 + 32))


def test_clip_zero_shot_judge_from_the_judge_folder(comfy_server, api):
    world_clip_folder(comfy_server.base_dir / "models" / "clip_judge" / "tiny world clip")
    check = next(n for n in api.values() if n["class_type"] == "UnHypeErasureCheck")
    check["inputs"].update(judge="CLIP zero-shot", clip_model="tiny world clip",
                           erased_concept="a red shape",
                           other_classes="\n".join(f"a {c} shape" for c in (
                               "orange", "yellow", "green", "teal", "blue", "purple", "pink")))
    outputs = comfy_server.run(api, budget=300)
    report = next(o["text"][0] for k, o in outputs.items()
                  if api[k]["class_type"] == "UnHypeErasureCheck")
    print(report)
    assert "CLIP zero-shot (tiny world clip, open_clip)" in report
    efficacy, specificity = scores(report)
    assert efficacy >= 0.875 and specificity == 1.0


def sampled(model: dict | None, label: str) -> dict:
    """The prompt through `model` (a node making the MODEL; None: the original), decoded and
    saved."""
    graph = {} if model is None else {"model": model}
    return {**graph,
            "sampler": {"class_type": "KSampler", "inputs": {
                "model": ["model" if model else "world", 0], "positive": ["positive", 0],
                "negative": ["negative", 0], "latent_image": ["latent", 0], "seed": 7,
                "steps": 25, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                "denoise": 1.0}},
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0],
                                                             "vae": ["world", 2]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0],
                                                           "filename_prefix": f"bake/{label}"}}}


def test_baked_file_samples_like_apply_dynamic_lora(comfy_server, object_info, api):
    workflow = json.loads((WORKFLOWS / "bake_lora.json").read_text())
    assert validate(workflow, object_info) == []
    graph = to_api(workflow, object_info)
    outputs = comfy_server.run(graph, budget=300)
    report = next(o["text"][0] for k, o in outputs.items() if graph[k]["class_type"] ==
                  "PreviewAny")
    print(report)
    name = re.search(r"saved (\S+\.safetensors)", report)[1]
    assert (comfy_server.base_dir / "models" / "loras" / name).is_file()
    unhype = ["unhype", 0]
    common = {
        "world": {"class_type": "UnHypeProvingGround", "inputs": {}},
        "unhype": {"class_type": "UnHypeLoader", "inputs": {
            "unhype_name": next(n for n in graph.values() if n["class_type"] == "UnHypeLoader")[
                "inputs"]["unhype_name"]}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {
            "clip": ["world", 1], "text": "a photo of a red circle"}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["world", 1], "text": ""}},
        "positive": {"class_type": "UnHypeConditioner", "inputs": {
            "conditioning": ["text", 0], "unhype": unhype}},
        "negative": {"class_type": "UnHypeConditioner", "inputs": {
            "conditioning": ["empty", 0], "unhype": unhype}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {
            "width": 32, "height": 32, "batch_size": 4}},
    }
    models = {
        "baked": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["world", 0], "lora_name": name, "strength_model": 1.0}},
        "dynamic": {"class_type": "UnHypeApplyDynamicLoRA", "inputs": {
            "model": ["world", 0], "unhype": unhype, "strength": 1.0, "mode": "all rows"}},
        "original": None,
    }
    images = {}
    for label, model in models.items():
        out = comfy_server.run({**common, **sampled(model, label)}, budget=300)
        images[label] = np.stack([np.asarray(Image.open(comfy_server.output_path(i)), np.int16)
                                  for i in out["save"]["images"]])
    baked, dynamic, base = images["baked"], images["dynamic"], images["original"]
    difference = int(np.abs(baked - dynamic).max())
    print(f"8-bit images, baked vs Apply Dynamic LoRA: max difference {difference}; "
          f"vs the original model: {int(np.abs(baked - base).max())}")
    assert difference <= 1 and np.abs(baked - base).max() > 50
