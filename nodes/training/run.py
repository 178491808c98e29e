"""Training on a ComfyUI model: plan, build, run. Shared by the UnHype Trainer node and the
headless trainer (nodes/training/headless.py).

`run_training(model, clip, settings, ...)` plans the run from the settings and the model family,
builds the core Trainer on a `ComfyDenoiser`, resumes from a checkpoint when asked, trains, and
writes the network to the `unhype` model folder under a sanitised, never-overwritten name;
checkpoints go to `unhype_checkpoints` (nodes/folders.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...unhype import NetworkInfo, save_unhype, targets_from_preset
from ...unhype.card import model_card
from ...unhype.families import checkpoint_labels
from ...unhype.families import family as family_entry
from ...unhype.fileformat import HASH_KEY
from ...unhype.files import EXTENSION, beside, sanitise_name, unique_path, write_text_atomically
from ...unhype.prompts import builtin_retain_prompts, parse_prompt_lines
from ...unhype.settings import ConfigError, TrainingSettings, build_configs, trigger_kind
from ...unhype.training import Progress, Trainer, TrainingDivergedError
from ...unhype.trigger import measure_trigger
from ..folders import CHECKPOINTS, NETWORKS, first_folder, resolve_resume
from ..models import model_family
from .denoiser import ComfyDenoiser
from .preview import preview_grid


class TrainingError(ConfigError):
    """A clear, user-facing reason why training cannot start or go on."""


# -- building the trainer --
@dataclass
class Plan:
    """What will be trained, decided from the settings and the model."""

    family: str
    target_preset: str
    retain_prompts: list[str]
    notes: list[str] = field(default_factory=list)


def make_plan(settings: TrainingSettings, family: str) -> Plan:
    settings.validate()
    notes = []
    if settings.preset != "custom" and settings.templates.strip():
        notes.append("templates are used with the 'custom' preset only: ignored")
    target_preset = settings.resolve(family)["target_preset"]
    builtin = builtin_retain_prompts() if settings.builtin_retain else []
    retain = list(dict.fromkeys(parse_prompt_lines(settings.retain_prompts) + builtin))
    return Plan(family, target_preset, retain, notes)


def build_trainer(denoiser: ComfyDenoiser, settings: TrainingSettings, plan: Plan,
                  group=None) -> Trainer:
    try:
        targets = targets_from_preset(denoiser.lora_root, plan.target_preset)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    try:
        trigger = measure_trigger(denoiser, trigger_kind(settings, plan.family))
    except ValueError as error:
        raise TrainingError(str(error)) from None
    processes = torch.distributed.get_world_size(group) if group is not None else 1
    net_config, config = build_configs(settings, plan.family, plan.retain_prompts, trigger,
                                       processes)
    source = family_entry(plan.family).trigger_source(trigger.kind, trigger.width)
    info = NetworkInfo(plan.family, plan.target_preset, title=sanitise_name(settings.save_name),
                       author=settings.author, embedding_source=source)
    try:
        return Trainer(denoiser, net_config, targets, info, config, group)
    except ValueError as error:
        raise TrainingError(str(error)) from None


def not_separated(separation) -> str:
    """The warning for a run whose network does not tell erase prompts apart (it may erase
    nothing): ends the report, and is logged as a warning."""
    line = f"WARNING: this network did not separate, it may not erase: {separation.advice()}"
    logging.warning("UnHype Trainer: %s", line)
    return line


@dataclass
class Outcome:
    network: object
    path: str  # empty in the processes other than 0 of a distributed run
    name: str
    history: list
    report: str


def refuse_untrained(family: str) -> None:
    """A family UnHype serves at inference but cannot train (`Family.trains`) stops here."""
    entry = family_entry(family)
    if not entry.trains:
        labels = checkpoint_labels(trains_only=True)
        raise TrainingError(
            f"training on {entry.label} is not built yet: its UnHype networks "
            "run (Apply Dynamic LoRA, UnHype Bake LoRA), but the Trainer trains "
            f"{', '.join(labels[:-1])} and {labels[-1]} models only. Load one of those "
            "checkpoints to train.")


def draw_preview(path: str, denoiser, network, vae, config, log) -> str:
    """Write the preview grid to `path`; returns `path`, or the line saying why it is missing."""
    log("drawing the preview (the base model and the network on four prompts)")
    try:
        grid = preview_grid(denoiser, network, vae, config, config.seed)
        partial = path + ".partial"
        grid.save(partial, format="PNG")
        os.replace(partial, path)
    except Exception as error:  # the network is saved: a preview is never worth losing it
        logging.exception("UnHype Trainer: the preview failed")
        return f"no preview: {type(error).__name__}: {str(error).splitlines()[0]}"
    return path


def run_training(model, clip, settings: TrainingSettings, *, vae=None,
                 output_dir: str | None = None, checkpoint_dir: str | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 log: Callable[[str], None] = lambda line: None, group=None) -> Outcome:
    """Train, checkpoint, save. Any interruption leaves a resumable checkpoint (and re-raises).
    With a `vae` (and the concepts not hidden), a before/after preview grid is drawn beside
    the network (nodes/training/preview.py); a preview that fails is reported, and the network
    is already saved.

    With a torch.distributed `group`, every process trains its share and process 0 writes the
    checkpoints and the network (the others' Outcome has an empty `path`)."""
    try:
        family = model_family(model)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    refuse_untrained(family)
    plan = make_plan(settings, family)
    resume = resolve_resume(settings.resume)
    stem = sanitise_name(settings.save_name)
    output_dir = output_dir or first_folder(NETWORKS)
    checkpoint_dir = checkpoint_dir or first_folder(CHECKPOINTS)
    started = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = ComfyDenoiser(
            model, clip, guidance=settings.guidance, sampling_steps=settings.sampling_steps,
            resolution=settings.resolution, family=family)
        trainer = build_trainer(denoiser, settings, plan, group)
        if resume:
            try:
                trainer.load_checkpoint(resume)
            except (ValueError, RuntimeError, KeyError) as error:
                raise TrainingError(
                    f"resume: {os.path.basename(resume)} cannot continue this training: "
                    f"{str(error).splitlines()[0]}. Resume with the same model and settings "
                    "(only steps may grow).") from None
            checkpoint_path = resume
            log(f"resuming {os.path.basename(resume)} at step {trainer.step}")
        else:
            checkpoint_path = unique_path(checkpoint_dir, stem)
        net, config = trainer.module.config, trainer.config
        log(f"UnHype training: {len(config.concepts)} concept(s) on {family} "
            f"({plan.target_preset}, {len(trainer.module.targets)} layers, rank {net.rank}, "
            f"{net.variant}), {config.objective}, {config.steps} steps, learning rate "
            f"{config.learning_rate:g}, eta {config.eta:g} on "
            f"{denoiser.device}; checkpoint {checkpoint_path}")
        for note in plan.notes:
            log(note)
        try:
            result = trainer.run(checkpoint_path, on_progress)
        except TrainingDivergedError as error:
            raise TrainingError(str(error)) from None
        network = result.network.to("cpu")
        path = unique_path(output_dir, stem) if trainer.rank == 0 else ""
        card, preview = beside(path, ".md"), beside(path, ".preview.png")
        drawn = ""
        if path:
            metadata = save_unhype(path, network)
            if vae is not None and settings.hide_concepts:
                drawn = ("no preview: hide_concepts is on, and the preview would show the erase "
                         "prompts and what the base model draws for them")
            elif vae is not None:
                drawn = draw_preview(preview, denoiser, network, vae, trainer.config, log)
            write_text_atomically(card, model_card(
                network.info, file_name=os.path.basename(path), hash_sha256=metadata[HASH_KEY],
                preview=os.path.basename(preview) if drawn == preview else None))
    name = os.path.basename(path) or f"(written by process 0 of {trainer.world})"
    seconds = time.perf_counter() - started
    last = trainer.history[-1] if trainer.history else {}
    renamed = name != stem + EXTENSION
    report = "\n".join([
        f"saved {name}" + (f" ({stem}{EXTENSION} exists: not overwritten)" if renamed else ""),
        f"folder {os.path.dirname(path)}",
        *([f"model card {os.path.basename(card)} (paste it into a model host's page)"]
          if path else []),
        *([f"preview {os.path.basename(preview)} (upload it with the card)" if drawn == preview
           else drawn] if drawn else []),
        *([] if vae is not None or not path else
          ["no preview: connect the checkpoint's VAE to the Trainer to draw one"]),
        f"{trainer.step} steps, {seconds:.1f}s, x_t samplings {result.xt_samplings}",
        f"final losses: removal {last.get('removal', float('nan')):.4g}, retention "
        f"{last.get('retention', float('nan')):.4g}, esd {last.get('esd', float('nan')):.4g}",
        f"checkpoint {os.path.basename(checkpoint_path)}",
        result.separation.summary(),
        *([] if result.separation.separated else [not_separated(result.separation)]),
        *plan.notes,
    ])
    log(report)
    return Outcome(network, path, name, list(trainer.history), report)
