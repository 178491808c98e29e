"""Trainer settings, each declared once: the Trainer node's inputs, the headless config's keys and
their bounds, and the values the core trainer gets all come from `SETTINGS`, `PRESETS` and the
families' training defaults (unhype/families.py).

A numeric setting left at 0 means "the default": a model family's value (Flux, the proving
ground) wins over the preset's, which wins over `COMMON`. The presets follow the authors'
configs (PAPER.md): objects = their Imagenette run, people = celebrities, explicit content = SD
nudity; Flux = their Flux nudity run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass

from .choices import OBJECTIVES
from .families import RUN_VALUES, per_family, resolve, unset
from .hypernet import VARIANTS, HyperNetConfig
from .prompts import (
    GENERIC_TEMPLATES,
    PERSON_TEMPLATES,
    Concept,
    parse_concepts,
    parse_prompt_lines,
)
from .targets import TARGET_PRESETS
from .training import TrainConfig
from .trigger import TRIGGERS, TriggerSpec

#: what every run uses unless a preset or family says otherwise
COMMON = {"removal_step": 1e-4, "lr_gamma": 0.9, "lr_every": 3000, "alpha0": 1.0,
          "trajectory_length": 300, "hidden": 512,
          # removal draws batched into one model call (their activations held at once): 4
          # rows of a full-size UNet's backward, a guess not measured on a GPU
          "draws_per_call": 4}
#: removal_draws 0 takes one draw per step for every this many concepts, so each concept gets
#: as many updates whatever the list's length: 20 identities of the proving ground erase in
#: 1000 steps with 4 draws (H_o 96.6) where one draw needs 4000 (docs/results.md, many concepts)
CONCEPTS_PER_DRAW = 5

PRESETS = {
    "objects": {"templates": GENERIC_TEMPLATES, "anchor": "", "eta": 0.3, "rank": 6,
                "steps": 6000, "learning_rate": 5e-5, "retain_learning_rate": 5e-5,
                "removal_weight": 5.0, "retain_weight": 5.0},
    "people": {"templates": PERSON_TEMPLATES, "anchor": "a person", "eta": 1.0, "rank": 6,
               "steps": 4000, "learning_rate": 1e-4, "retain_learning_rate": 3e-4,
               "removal_weight": 10.0, "retain_weight": 5.0},
    "explicit content": {"templates": GENERIC_TEMPLATES, "anchor": "a fully clothed person",
                         "eta": 2.0, "rank": 1, "hidden": 100, "steps": 4000,
                         "learning_rate": 1e-3, "retain_learning_rate": 1e-3,
                         "removal_weight": 10.0, "retain_weight": 0.1},
    # your templates (generic ones when none are given), the concept left out, the people
    # schedule
    "custom": {"templates": GENERIC_TEMPLATES, "anchor": "", "eta": 1.0, "rank": 6,
               "steps": 4000, "learning_rate": 1e-4, "retain_learning_rate": 3e-4,
               "removal_weight": 10.0, "retain_weight": 5.0},
}

#: the compact variant's default learning rates, as a fraction of the family's or preset's: its
#: trunk is shared by every layer, so each Adam step moves every layer's LoRA at once. At the
#: proving ground's 1e-3 its erase LoRA grew and collapsed from checkpoint to checkpoint (seeds 3
#: and, with SiLU in place of ReLU, 0 ended erasing nothing); at 3e-4 both erased (docs/results.md)
COMPACT_LEARNING_RATE_SCALE = 0.3

@dataclass(frozen=True)
class Setting:
    """One setting: its type and default, its bounds, and how the node shows it."""

    name: str
    default: object
    tooltip: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    multiline: bool = False
    optional: bool = False  # an optional node input
    advanced: bool = False  # collapsed on the node
    step: float | None = None

    @property
    def kind(self) -> type:
        return type(self.default)


_DEFAULT = "0: the default (model family, then preset)."

# Node inputs in this order (a saved UI workflow stores widget values by position: append only).
SETTINGS = (
    Setting("concepts", "", "One concept per line. Each training prompt is pushed towards "
            "itself with the concept replaced by its anchor, so the rest of the picture stays "
            "('a photo of X at the beach' -> 'a photo of a person at the beach'). 'concept -> "
            "anchor' sets the anchor (e.g. 'tench -> fish'); 'concept -> -' leaves the concept "
            "out ('a red circle' -> 'a circle'); without one the preset's anchor is used.",
            multiline=True),
    Setting("preset", "objects", "Templates, anchor and schedule of one of the authors' runs: "
            "objects (the concept left out, eta 0.3), people ('a person', eta 1), explicit "
            "content ('a fully clothed person', eta 2, rank 1), custom (your templates, the "
            "concept left out).",
            choices=tuple(PRESETS)),
    Setting("objective", "trajectory", "trajectory: the paper's, as its authors train it (ESD "
            "gradient at a random s + smoothness along s); direct: ESD loss at s=T (ablation).",
            choices=OBJECTIVES),
    Setting("steps", 0, "Training steps. A longer concept list needs no more: each step takes "
            "more removal draws instead (removal_draws; proving ground: 1000 steps erase 1 and "
            "20 identities alike, docs/results.md, many concepts). " + _DEFAULT,
            0, 1_000_000),
    Setting("learning_rate", 0.0, "Adam learning rate of the removal step. " + _DEFAULT, 0.0,
            1.0, step=1e-5),
    Setting("rank", 0, "LoRA rank. " + _DEFAULT, 0, 64),
    Setting("variant", "paper", "paper: one MLP pair per layer (~180M parameters on SD1.x); "
            "compact: a shared trunk (far smaller; its default learning rates are 0.3x the "
            "paper's).", choices=VARIANTS),
    Setting("seed", 0, "Seed of the network's initialisation and of every random draw.", 0,
            2**31 - 1),
    Setting("save_name", "unhype", "File name in models/unhype (letters, digits, _ - . kept; "
            "an existing file is never overwritten: _2, _3 ... is appended)."),
    Setting("checkpoint_every", 100, "Steps between resumable checkpoints in "
            "models/unhype_checkpoints.", 1, 1_000_000),
    Setting("retain_prompts", "", "Prompts to keep untouched, one per line, used together with "
            "the built-in list of everyday prompts.", multiline=True, optional=True),
    Setting("builtin_retain", True, "Also keep the built-in list of a few hundred everyday "
            "prompts untouched.", optional=True),
    Setting("resume", "", "A checkpoint from models/unhype_checkpoints to continue (same "
            "settings; steps may grow).", optional=True),
    Setting("templates", "", "custom preset: prompt templates, one per line, '{}' = concept.",
            multiline=True, optional=True),
    Setting("eta", 0.0, "ESD strength: how far past the anchor to push. " + _DEFAULT, 0.0, 10.0,
            optional=True, advanced=True, step=0.05),
    Setting("target_preset", "auto", "Layers that get the LoRA; auto picks from the model "
            "family.", choices=("auto", *sorted(TARGET_PRESETS)), optional=True, advanced=True),
    Setting("hidden", 0, "Hypernetwork width. " + _DEFAULT, 0, 4096, optional=True,
            advanced=True),
    Setting("guidance", 0.0, "CFG of the ESD sampling (guidance-distilled models such as Flux: "
            f"their guidance). 0: {per_family('guidance')}.", 0.0, 30.0, optional=True,
            advanced=True, step=0.1),
    Setting("sampling_steps", 50, "Schedule length of the ESD partial sampling.", 2, 1000,
            optional=True, advanced=True),
    Setting("resolution", 0, f"Training resolution in pixels; 0: {per_family('resolution')}.", 0,
            4096, optional=True, advanced=True, step=8),
    Setting("xt_cache_size", 32, "x_t samples kept per concept and reused; 0 samples every "
            "step.", 0, 4096, optional=True, advanced=True),
    Setting("hide_concepts", False, "Record only a SHA-256 of the concept list in the file and "
            "the checkpoints, not the concepts and anchors.", optional=True, advanced=True),
    Setting("retain_learning_rate", 0.0, "Adam learning rate of the retention step. " + _DEFAULT,
            0.0, 1.0, optional=True, advanced=True, step=1e-5),
    Setting("removal_weight", 0.0, "w_rm: weight of the trajectory term. " + _DEFAULT, 0.0,
            1000.0, optional=True, advanced=True),
    Setting("retain_weight", 0.0, "w_rt: weight of the retention loss. " + _DEFAULT, 0.0, 1000.0,
            optional=True, advanced=True),
    Setting("removal_step", 0.0, "lambda: the gradient-step size the trajectory learns. "
            + _DEFAULT, 0.0, 1.0, optional=True, advanced=True, step=1e-5),
    Setting("retain_batch", 32, "Retain prompts per retention step (the authors: 1000, which "
            "costs far more memory at SD size).", 1, 4096, optional=True, advanced=True),
    Setting("removal_draws", 0, "Removal samples (concept, x_t, s) per step, their gradients "
            "averaged; a distributed run (torchrun) splits them across processes. 0: one per "
            f"{CONCEPTS_PER_DRAW} concepts (at least one per process), so a long concept list "
            "needs no more steps than a short one.", 0, 1024, optional=True, advanced=True),
    Setting("trigger", "auto", "What the network reads of a prompt: clip-pooled (the "
            "paper: CLIP's pooled vector) or cond-pooled (pooled from the conditioning the "
            "model reads: works without a CLIP, sees every chunk); auto: clip-pooled where the "
            "family has a CLIP.", choices=("auto", *TRIGGERS), optional=True, advanced=True),
    Setting("author", "", "Your name or handle, written into the file (ModelSpec author) and "
            "its model card; empty: anonymous.", optional=True, advanced=True),
)
#: settings where 0 means "the family's or the preset's value"
DEFAULTED = ("steps", "learning_rate", "rank", "eta", "hidden", "retain_learning_rate",
             "removal_weight", "retain_weight", "removal_step")


class ConfigError(ValueError):
    """Settings that cannot be used, with what to fix."""


def _validate(self) -> TrainingSettings:
    problems = []
    try:
        parse_concepts(self.concepts)
    except ValueError as error:
        problems.append(f"concepts: {error}")
    for setting in SETTINGS:
        value = getattr(self, setting.name)
        if setting.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(self, setting.name, value)
        if not isinstance(value, setting.kind) or (setting.kind is int and
                                                   isinstance(value, bool)):
            problems.append(f"{setting.name}: expected {setting.kind.__name__}, got "
                            f"{type(value).__name__} {value!r}")
        elif setting.choices and value not in setting.choices:
            problems.append(f"{setting.name}: {value!r} is not one of {list(setting.choices)}")
        elif setting.low is not None and not setting.low <= value <= setting.high:
            problems.append(f"{setting.name}: must be between {setting.low:g} and "
                            f"{setting.high:g}, got {value!r}")
    if self.preset == "custom" and self.templates.strip():
        bad = [t for t in parse_prompt_lines(self.templates) if "{}" not in t]
        if bad:
            problems.append(f"templates: each needs '{{}}' for the concept: {bad[:3]}")
    if problems:
        raise ConfigError("invalid training settings:\n  " + "\n  ".join(problems))
    return self


def _resolve(self, family: str) -> dict:
    """Every value the run uses (unhype/families.py `resolve`): set ones, then the family's, the
    preset's, then COMMON's; the compact variant scales the learning rates that were not set."""
    given = {name: getattr(self, name) for name in (*DEFAULTED, *RUN_VALUES)}
    values = resolve(family, given, {**COMMON, **PRESETS[self.preset]})
    if self.variant == "compact":
        for name in ("learning_rate", "retain_learning_rate"):
            if unset(given[name]):
                values[name] *= COMPACT_LEARNING_RATE_SCALE
    if self.preset == "custom" and self.templates.strip():
        values["templates"] = parse_prompt_lines(self.templates)
    values["templates"] = list(values["templates"])
    return values


TrainingSettings = make_dataclass(
    "TrainingSettings", [(s.name, s.kind, field(default=s.default)) for s in SETTINGS],
    namespace={"validate": _validate, "resolve": _resolve,
               "__doc__": "Everything the Trainer node and the headless trainer take."})


#: triggers wider than this get a learned down-projection to PROJECTION_WIDTH (LLM encoders)
PROJECT_ABOVE, PROJECTION_WIDTH = 2048, 768


def trigger_kind(settings: TrainingSettings, family: str) -> str:
    """The trigger a run on `family` reads: the set one, or the family's."""
    return settings.resolve(family)["trigger"]


def auto_removal_draws(concepts: int, processes: int = 1) -> int:
    """Removal draws per step for `concepts` (`CONCEPTS_PER_DRAW` each), a multiple of the
    processes of a distributed run."""
    draws = max(1, math.ceil(concepts / CONCEPTS_PER_DRAW))
    return processes * math.ceil(draws / processes)


def build_configs(settings: TrainingSettings, family: str, retain_prompts: list[str],
                  trigger: TriggerSpec, processes: int = 1) -> tuple[HyperNetConfig, TrainConfig]:
    """The network's and the trainer's configs for validated settings on a model family, with
    the model's `trigger` (unhype/trigger.py measure_trigger of `trigger_kind`), for
    a run in `processes` data-parallel processes."""
    values = settings.resolve(family)
    concepts: list[Concept] = parse_concepts(settings.concepts, default_anchor=values["anchor"])
    erased = {c.name.lower() for c in concepts}
    net = HyperNetConfig(
        embed_dim=trigger.width, trigger=trigger.kind, trigger_skip=trigger.skip,
        input_projection=PROJECTION_WIDTH if trigger.width > PROJECT_ABOVE else 0,
        rank=int(values["rank"]), hidden=int(values["hidden"]),
        trajectory_length=int(values["trajectory_length"]), alpha0=values["alpha0"],
        variant=settings.variant, seed=settings.seed)
    train = TrainConfig(
        concepts=concepts, retain_prompts=[p for p in retain_prompts if p.lower() not in erased],
        templates=values["templates"], objective=settings.objective, steps=int(values["steps"]),
        learning_rate=values["learning_rate"],
        retain_learning_rate=values["retain_learning_rate"], eta=values["eta"],
        removal_step=values["removal_step"], removal_weight=values["removal_weight"],
        retain_weight=values["retain_weight"], retain_batch=settings.retain_batch,
        removal_draws=settings.removal_draws or auto_removal_draws(len(concepts), processes),
        draws_per_call=int(values["draws_per_call"]),
        xt_cache_size=settings.xt_cache_size, lr_gamma=values["lr_gamma"],
        lr_every=int(values["lr_every"]), seed=settings.seed,
        checkpoint_every=settings.checkpoint_every, hide_concepts=settings.hide_concepts)
    return net, train
