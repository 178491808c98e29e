"""workflows/erasure_check.json in a real ComfyUI server (CPU): the proving ground's original and
UnHype branches, same prompts and seeds, into UnHype Erasure Check.

A network that erases red is trained here, quickly (the direct objective, 150 steps: enough for
the pixel judge in the world), and put in the server's models/unhype under the name the
workflow loads. The shipped graph runs with the pixel judge; then the check alone runs again
(the images come from ComfyUI's cache) with CLIP zero-shot on the world's tiny CLIP, put in
the server's models/clip_judge as an open_clip model folder.
"""

import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from _workflow_api import to_api, validate
from test_erasure_check import world_clip_folder

pytestmark = pytest.mark.host

WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "erasure_check.json"
STEPS = 150


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
    network, _ = train_unhype(load_world(), ErasureTask(["red"]), steps=STEPS,
                              objective="direct")
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
    outputs = comfy_server.run(api, timeout=600)
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
    outputs = comfy_server.run(api, timeout=300)
    report = next(o["text"][0] for k, o in outputs.items()
                  if api[k]["class_type"] == "UnHypeErasureCheck")
    print(report)
    assert "CLIP zero-shot (tiny world clip, open_clip)" in report
    efficacy, specificity = scores(report)
    assert efficacy >= 0.875 and specificity == 1.0
