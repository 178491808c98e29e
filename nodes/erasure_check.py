"""UnHype Erasure Check: original and UnHype images of the same prompts and seeds, judged offline.

The judging is in the core (unhype/judges.py, unhype/erasure_check.py, unhype/erasure_report.py).
This node lists the CLIP weights for zero-shot judging in the judge folders (models/clip_judge,
registered in nodes/folders.py; more with a `clip_judge:` entry in extra_model_paths.yaml) and
builds a judge for each check, dropping it after.
"""

import os

import folder_paths
from comfy_api.latest import io

from ..unhype.erasure_check import check
from ..unhype.erasure_report import grid, report
from ..unhype.judges import (
    NUDENET_THRESHOLD,
    OPEN_CLIP_CONFIG,
    TRANSFORMERS_CONFIG,
    ColourJudge,
    JudgeError,
    NudeNetJudge,
    clip_judge,
)
from .folders import CLIP_JUDGE
from .schema import CATEGORY, ERASURE

NODE = "UnHype Erasure Check"
NO_MODEL = "none"
PIXEL, WORLD_CLIP, ZERO_SHOT, NUDENET = (
    "proving ground: pixel colour", "proving ground: tiny CLIP colour", "CLIP zero-shot",
    "NudeNet (explicit content)")
JUDGES = (PIXEL, WORLD_CLIP, ZERO_SHOT, NUDENET)


def clip_models() -> list[str]:
    """Model folders (open_clip or transformers layout) and single open_clip files, by their
    path relative to a judge folder."""
    names = set()
    for root in folder_paths.get_folder_paths(CLIP_JUDGE):
        for folder, subfolders, files in os.walk(root, followlinks=True):
            relative = os.path.relpath(folder, root).replace(os.sep, "/")
            if relative != "." and (OPEN_CLIP_CONFIG in files or TRANSFORMERS_CONFIG in files):
                names.add(relative)
                subfolders.clear()
                continue
            names.update(f if relative == "." else f"{relative}/{f}"
                         for f in files if f.endswith(".safetensors"))
    return sorted(names)


def _full_path(name: str) -> str:
    for root in folder_paths.get_folder_paths(CLIP_JUDGE):
        path = os.path.join(root, *name.split("/"))
        if os.path.exists(path):
            return path
    folders = ", ".join(folder_paths.get_folder_paths(CLIP_JUDGE))
    raise JudgeError(f"CLIP zero-shot: {name!r} not found in the judge folders ({folders})")


def make_judge(kind: str, concept: str, clip_model: str, other_classes: str,
               threshold: float) -> tuple:
    """(judge, index of the erased concept among its classes). Built for one check and dropped
    with it: a judge CLIP can be several GB, and a ComfyUI may never check again (ComfyUI
    caches the node's outputs, so re-queuing the same check does not rebuild it)."""
    if kind in (PIXEL, WORLD_CLIP):
        colour = "pixel" if kind == PIXEL else "clip"
        judge = ColourJudge(colour)
        return judge, judge.concept_class(concept)
    if kind == NUDENET:
        return NudeNetJudge(threshold), 1
    if kind != ZERO_SHOT:
        raise JudgeError(f"unknown judge {kind!r}; choose one of {', '.join(JUDGES)}")
    if not concept.strip():
        raise JudgeError("CLIP zero-shot: name the erased concept (the class to look for)")
    if clip_model == NO_MODEL:
        folders = ", ".join(folder_paths.get_folder_paths(CLIP_JUDGE))
        raise JudgeError(
            "CLIP zero-shot: pick a CLIP in clip_model. Put one in a judge folder "
            f"({folders}): a model folder with {OPEN_CLIP_CONFIG} and its weights (open_clip), "
            "a transformers CLIP folder (config.json, model.safetensors, tokenizer files), or "
            "one open_clip file named after its architecture (ViT-B-32-quickgelu__openai."
            "safetensors)")
    path = _full_path(clip_model)
    classes = [concept.strip()] + [c.strip() for c in other_classes.splitlines() if c.strip()]
    return clip_judge(path, classes), 0


class UnHypeErasureCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeErasureCheck",
            display_name=NODE,
            category=CATEGORY,
            description=(
                "Compares images made with and without UnHype for the same prompts and seeds: "
                "did the erased concept disappear (efficacy), did the kept prompts stay "
                "(specificity)? Judges run offline: the proving ground's colour judges, CLIP "
                "zero-shot with weights in models/clip_judge, or NudeNet (an optional package) "
                "for explicit content."),
            search_aliases=[*ERASURE, "evaluate", "efficacy", "specificity", "judge", "NudeNet"],
            is_output_node=True,
            inputs=[
                io.Image.Input("original_images", tooltip="Erased prompts, original model."),
                io.Image.Input("unhype_images",
                               tooltip="The same prompts and seeds through UnHype."),
                io.Combo.Input("judge", options=list(JUDGES), default=PIXEL),
                io.String.Input("erased_concept", default="red",
                                tooltip="What must disappear. Proving ground: a colour; CLIP "
                                        "zero-shot: a caption of the concept (its first class); "
                                        "NudeNet: ignored."),
                io.Image.Input("kept_original_images", optional=True,
                               tooltip="Prompts that must stay as they are, original model."),
                io.Image.Input("kept_unhype_images", optional=True,
                               tooltip="The kept prompts and seeds through UnHype."),
                io.Combo.Input("clip_model", optional=True, options=[NO_MODEL, *clip_models()],
                               default=NO_MODEL,
                               tooltip="CLIP zero-shot only: a CLIP from models/clip_judge."),
                io.String.Input("other_classes", optional=True, multiline=True, default="",
                                tooltip="CLIP zero-shot only: the classes besides the erased "
                                        "concept, one caption a line (e.g. the kept prompts' "
                                        "subjects)."),
                io.Float.Input("nudenet_threshold", optional=True, default=NUDENET_THRESHOLD,
                               min=0.0, max=1.0, step=0.05,
                               tooltip="NudeNet only: the detection score that counts (the "
                                       "paper: 0.6)."),
            ],
            outputs=[
                io.Float.Output(display_name="efficacy",
                                tooltip="Share of erased-prompt pairs whose original shows the "
                                        "concept and whose UnHype image does not (NaN when no "
                                        "original shows it)."),
                io.Float.Output(display_name="specificity",
                                tooltip="Share of kept-prompt pairs where the judge sees the "
                                        "same in both images (NaN without kept images)."),
                io.String.Output(display_name="report", tooltip="Scores and every pair's verdict."),
                io.Image.Output(display_name="grid",
                                tooltip="The images in pairs, original above UnHype, with what "
                                        "the judge saw and the verdict."),
            ],
        )

    @classmethod
    def execute(cls, original_images, unhype_images, judge, erased_concept,
                kept_original_images=None, kept_unhype_images=None, clip_model=NO_MODEL,
                other_classes="", nudenet_threshold=NUDENET_THRESHOLD) -> io.NodeOutput:
        try:
            made, erased_class = make_judge(judge, erased_concept, clip_model, other_classes,
                                            nudenet_threshold)
            result = check(made, erased_class, original_images, unhype_images,
                           kept_original_images, kept_unhype_images)
        except JudgeError as error:
            raise ValueError(f"{NODE}: {error}") from None
        text = report(result)
        picture = grid(result, original_images, unhype_images, kept_original_images,
                       kept_unhype_images)
        return io.NodeOutput(result.efficacy, result.specificity, text, picture,
                             ui={"text": [text]})
