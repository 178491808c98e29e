"""UnHype Erasure Check as a node in an in-process ComfyUI: outputs, the judge folder
(models/clip_judge, extra_model_paths entries kept), and errors that name the node and the way
out."""

import math
import sys

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import host, node
from test_erasure_check import BLUE, RED, renders, world_clip_folder

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]


def module():
    return sys.modules[host()[1].__name__ + ".nodes.erasure_check"]


@pytest.fixture
def judge_folder(monkeypatch, tmp_path):
    fp = host()[0].folder_paths
    folder = tmp_path / "clip_judge"
    folder.mkdir()
    monkeypatch.setitem(fp.folder_names_and_paths, "clip_judge", ([str(folder)],
                                                                   {".safetensors"}))
    return folder


def run(**inputs):
    return ch.run_node(node("UnHypeErasureCheck"), **inputs)


def test_outputs_scores_report_and_grid():
    efficacy, specificity, report, grid = run(
        original_images=renders([RED, RED]), unhype_images=renders([BLUE, RED]),
        judge="proving ground: pixel colour", erased_concept="crimson",
        kept_original_images=renders([BLUE]), kept_unhype_images=renders([BLUE]))
    assert (efficacy, specificity) == (0.5, 1.0)
    assert "efficacy 50.0%: 1 of 2" in report and "erased concept: red" in report
    assert grid.shape[0] == 1 and grid.shape[-1] == 3
    efficacy, specificity, _, _ = run(
        original_images=renders([RED]), unhype_images=renders([BLUE]),
        judge="proving ground: tiny CLIP colour", erased_concept="red")
    assert efficacy == 1.0 and math.isnan(specificity)


def test_judge_folder_lists_model_folders_and_single_files(judge_folder):
    world_clip_folder(judge_folder / "laion" / "tiny clip")
    (judge_folder / "ViT-B-32__openai.safetensors").write_bytes(b"")
    (judge_folder / "hf").mkdir()
    (judge_folder / "hf" / "config.json").write_text('{"model_type": "clip"}')
    assert module().clip_models() == ["ViT-B-32__openai.safetensors", "hf", "laion/tiny clip"]
    spec = node("UnHypeErasureCheck").INPUT_TYPES()["optional"]["clip_model"]
    assert spec[1]["options"] == ["none", "ViT-B-32__openai.safetensors", "hf", "laion/tiny clip"]
    _, _, report, _ = run(original_images=renders([RED]), unhype_images=renders([BLUE]),
                          judge="CLIP zero-shot", erased_concept="a red shape",
                          clip_model="laion/tiny clip", other_classes="a blue shape\n\n")
    assert "CLIP zero-shot (tiny clip, open_clip)" in report and "efficacy 100.0%" in report


def test_registration_keeps_folders_from_extra_model_paths(monkeypatch):
    fp = host()[0].folder_paths
    monkeypatch.setitem(fp.folder_names_and_paths, "clip_judge", (["/elsewhere"], set()))
    sys.modules[host()[1].__name__ + ".nodes.folders"].register_folder("clip_judge")
    paths, extensions = fp.folder_names_and_paths["clip_judge"]
    assert paths[1:] == ["/elsewhere"] and paths[0].endswith("clip_judge")
    assert extensions == {".safetensors"}


@pytest.mark.parametrize("inputs, message", [
    ({"judge": "CLIP zero-shot", "erased_concept": "a dog"}, "pick a CLIP in clip_model"),
    ({"judge": "CLIP zero-shot", "erased_concept": "a dog", "clip_model": "gone"},
     "'gone' not found in the judge folders"),
    ({"judge": "proving ground: pixel colour", "erased_concept": "a dog"}, "names none of them"),
    ({"judge": "NudeNet (explicit content)", "erased_concept": ""}, "pip install nudenet==3.4.2"),
])
def test_errors_name_the_node_and_the_way_out(judge_folder, monkeypatch, inputs, message):
    monkeypatch.setitem(sys.modules, "nudenet", None)
    with pytest.raises(ValueError, match=r"UnHype Erasure Check: .*" + message):
        run(original_images=renders([RED]), unhype_images=renders([RED]), **inputs)


def test_batches_must_pair_up():
    with pytest.raises(ValueError, match="2 original images but 1 UnHype images"):
        run(original_images=renders([RED, RED]), unhype_images=torch.zeros(1, 32, 32, 3),
            judge="proving ground: pixel colour", erased_concept="red")


def test_a_judge_is_freed_when_the_check_ends(judge_folder):
    """A judge CLIP can be several GB: nothing of it outlives the check (issue: a ComfyUI that
    never checks again must not hold one)."""
    import gc
    import weakref

    ZeroShotJudge = sys.modules[host()[1].__name__ + ".unhype.judges"].ZeroShotJudge
    world_clip_folder(judge_folder / "tiny clip")
    built = []
    original = ZeroShotJudge.__init__

    def watch(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(weakref.ref(self))

    ZeroShotJudge.__init__ = watch
    try:
        run(original_images=renders([RED]), unhype_images=renders([BLUE]),
            judge="CLIP zero-shot", erased_concept="a red shape", clip_model="tiny clip",
            other_classes="a blue shape")
    finally:
        ZeroShotJudge.__init__ = original
    gc.collect()
    assert len(built) == 1 and built[0]() is None
