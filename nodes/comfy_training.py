"""Training on a ComfyUI model, shared by the UnHype Trainer node and the headless trainer.

`run_training(model, clip, settings, ...)` builds the core Trainer on a `ComfyDenoiser`, resumes
from a checkpoint when asked, trains, and writes the network to the `unhype` model folder under a
sanitised, never-overwritten name. Checkpoints go to the `unhype_checkpoints` folder
(models/unhype_checkpoints), which the UnHype Loader does not list.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import folder_paths
import torch

from ..unhype import NetworkInfo, save_unhype, targets_from_preset
from ..unhype.choices import PROVING_GROUND
from ..unhype.headless import HeadlessConfig
from ..unhype.prompts import builtin_retain_prompts, parse_prompt_lines
from ..unhype.settings import ConfigError, TrainingSettings, build_configs
from ..unhype.training import CHECKPOINT_KIND, Progress, Trainer, TrainingDivergedError
from .comfy_denoiser import FAMILIES, ComfyDenoiser, model_family
from .loader import FOLDER as NETWORK_FOLDER
from .loader import register_model_folder

CHECKPOINT_FOLDER = "unhype_checkpoints"
EXTENSION = ".safetensors"
_RESERVED = {"con", "prn", "aux", "nul",  # Windows device names, also with any extension
             *(f"{port}{n}" for port in ("com", "lpt") for n in "0123456789\u00b9\u00b2\u00b3")}


def register_checkpoint_folder() -> None:
    """models/unhype_checkpoints, keeping folders extra_model_paths.yaml registered before us."""
    default = os.path.join(folder_paths.models_dir, CHECKPOINT_FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(CHECKPOINT_FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.insert(0, default)
    folder_paths.folder_names_and_paths[CHECKPOINT_FOLDER] = (
        paths, set(extensions) | {EXTENSION} if extensions else {EXTENSION})


register_model_folder()
register_checkpoint_folder()


class TrainingError(ConfigError):
    """A clear, user-facing reason why training cannot start or go on."""


# -- names and folders --
def sanitise_name(name: str) -> str:
    """A file stem that stays inside its folder and that common file systems accept.

    Keeps letters, marks and digits of any script (in NFC, so the name reads back as typed),
    '_', '-' and '.'; every run of anything else (separators, spaces, symbols, control or
    invisible characters, and what the file-system encoding cannot store) becomes one '_'.
    Drops a .safetensors suffix, collapses dot runs, trims to 100 characters and 200 encoded
    bytes (file names stop at 255 bytes; room for '_2' and suffixes), puts '_' before a Windows
    device name; an empty result becomes 'unhype'.
    """
    encoding = sys.getfilesystemencoding()

    def kept(char: str) -> bool:
        if char in "_.-":
            return True
        if unicodedata.category(char)[0] not in "LMN":
            return False
        try:
            char.encode(encoding)
        except UnicodeEncodeError:
            return False
        return True

    stem = unicodedata.normalize("NFC", str(name)).strip()
    if stem.lower().endswith(EXTENSION):
        stem = stem[: -len(EXTENSION)]
    stem = re.sub(r"/+", "_", "".join(c if kept(c) else "/" for c in stem))
    stem = re.sub(r"\.{2,}", ".", stem)
    stem = stem.strip("._-")[:100]
    while len(stem.encode(encoding)) > 200:
        stem = stem[:-1]
    stem = stem.strip("._-")
    if not stem:
        stem = "unhype"
    if stem.split(".")[0].lower() in _RESERVED:
        stem = "_" + stem
    return stem


def unique_path(folder: str, stem: str) -> str:
    """folder/stem.safetensors, or stem_2, stem_3, ... when taken: nothing is overwritten."""
    os.makedirs(folder, exist_ok=True)
    candidate, number = stem, 1
    while os.path.exists(os.path.join(folder, candidate + EXTENSION)) or os.path.exists(
            os.path.join(folder, candidate + EXTENSION + ".partial-write")):
        number += 1
        candidate = f"{stem}_{number}"
    return os.path.join(folder, candidate + EXTENSION)


def _first_folder(kind: str) -> str:
    return folder_paths.get_folder_paths(kind)[0]


def checkpoint_names() -> list[str]:
    return sorted(folder_paths.get_filename_list(CHECKPOINT_FOLDER))


def resolve_resume(resume: str) -> str | None:
    """A checkpoint name from the unhype_checkpoints folders, or a path; None for no resume."""
    resume = (resume or "").strip()
    if not resume or resume.lower() == "none":
        return None
    path = folder_paths.get_full_path(CHECKPOINT_FOLDER, resume)
    if path is None and os.path.isfile(os.path.expanduser(resume)):
        path = os.path.expanduser(resume)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(CHECKPOINT_FOLDER))
        raise TrainingError(f"resume: checkpoint {resume!r} not found (looked in {folders})")
    try:
        load_state_header(path)
    except ValueError as error:
        raise TrainingError(f"resume: {error}") from None
    return path


def load_state_header(path: str) -> None:
    """Fails with a clear ValueError unless `path` is an UnHype training checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            kind = (handle.metadata() or {}).get("format")
    except Exception as error:
        raise ValueError(f"{path} is not a readable .safetensors file ({error})") from None
    if kind != CHECKPOINT_KIND:
        raise ValueError(
            f"{os.path.basename(path)} is not an UnHype training checkpoint (an UnHype network "
            "or another model file?): pick a file the Trainer wrote to models/unhype_checkpoints")


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
    target_preset = FAMILIES[family]["target_preset"]
    if settings.target_preset != "auto":
        target_preset = settings.target_preset
    builtin = builtin_retain_prompts() if settings.builtin_retain else []
    retain = list(dict.fromkeys(parse_prompt_lines(settings.retain_prompts) + builtin))
    return Plan(family, target_preset, retain, notes)


def build_trainer(denoiser: ComfyDenoiser, settings: TrainingSettings, plan: Plan,
                  group=None) -> Trainer:
    try:
        targets = targets_from_preset(denoiser.lora_root, plan.target_preset)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    embed_dim = int(denoiser.embed([""]).shape[1])
    processes = torch.distributed.get_world_size(group) if group is not None else 1
    net_config, config = build_configs(settings, plan.family, plan.retain_prompts, embed_dim,
                                       processes)
    info = NetworkInfo(plan.family, plan.target_preset, title=sanitise_name(settings.save_name),
                       embedding_source=_embedding_source(embed_dim))
    try:
        return Trainer(denoiser, net_config, targets, info, config, group)
    except ValueError as error:
        raise TrainingError(str(error)) from None


def _embedding_source(width: int) -> str:
    return {768: "CLIP-L pooled (final-layer-normed end-of-text state)",
            1024: "OpenCLIP-H pooled (projected)",
            1280: "CLIP-G pooled (projected)"}.get(width, f"pooled CLIP embedding ({width}-d)")


@dataclass
class Outcome:
    network: object
    path: str
    name: str
    checkpoint_path: str
    history: list
    seconds: float
    resumed_from: str | None
    report: str


def run_training(model, clip, settings: TrainingSettings, *, output_dir: str | None = None,
                 checkpoint_dir: str | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 log: Callable[[str], None] = lambda line: None, group=None) -> Outcome:
    """Train, checkpoint, save. Any interruption leaves a resumable checkpoint (and re-raises).

    With a torch.distributed `group`, every process trains its share and process 0 writes the
    checkpoints and the network (the others' Outcome has an empty `path`)."""
    try:
        family = model_family(model)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    plan = make_plan(settings, family)
    resume = resolve_resume(settings.resume)
    stem = sanitise_name(settings.save_name)
    output_dir = output_dir or _first_folder(NETWORK_FOLDER)
    checkpoint_dir = checkpoint_dir or _first_folder(CHECKPOINT_FOLDER)
    started = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = ComfyDenoiser(
            model, clip, guidance=settings.guidance or None, sampling_steps=settings.sampling_steps,
            resolution=settings.resolution or None, family=family)
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
        if path:
            save_unhype(path, network)
    name = os.path.basename(path) or f"(written by process 0 of {trainer.world})"
    seconds = time.perf_counter() - started
    last = trainer.history[-1] if trainer.history else {}
    renamed = name != stem + EXTENSION
    report = "\n".join([
        f"saved {name}" + (f" ({stem}{EXTENSION} exists: not overwritten)" if renamed else ""),
        f"folder {os.path.dirname(path)}",
        f"{trainer.step} steps, {seconds:.1f}s, x_t samplings {result.xt_samplings}",
        f"final losses: removal {last.get('removal', float('nan')):.4g}, retention "
        f"{last.get('retention', float('nan')):.4g}, esd {last.get('esd', float('nan')):.4g}",
        f"checkpoint {os.path.basename(checkpoint_path)}",
        *plan.notes,
    ])
    log(report)
    return Outcome(network, path, name, checkpoint_path, list(trainer.history), seconds,
                   resume, report)


# -- the loss plot --
def loss_plot(history: list[dict], width: int = 768, height: int = 512) -> torch.Tensor:
    """Losses (log scale) above, erase vs retain activation below; IMAGE [1, H, W, 3] in 0..1."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    panels = [
        ("losses (log10)", [("removal", (200, 60, 40)), ("retention", (40, 110, 200)),
                            ("esd", (60, 150, 60))], True, (10, 10, width - 10, height // 2 - 5)),
        ("activation (LoRA norm)", [("erase_activation", (200, 60, 40)),
                                    ("retain_activation", (40, 110, 200))], False,
         (10, height // 2 + 5, width - 10, height - 10)),
    ]
    for title, series, log_scale, (x0, y0, x1, y1) in panels:
        draw.rectangle((x0, y0, x1, y1), outline=(120, 120, 120), fill=(255, 255, 255))
        draw.text((x0 + 6, y0 + 4), title, fill=(0, 0, 0))
        curves = []
        for key, colour in series:
            points = [(r["step"], r[key]) for r in history
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
                      and (not log_scale or r[key] > 0)]
            if log_scale:
                points = [(s, math.log10(v)) for s, v in points]
            curves.append((key, colour, points))
        values = [v for _, _, pts in curves for _, v in pts]
        steps = [s for _, _, pts in curves for s, _ in pts]
        left, top, right, bottom = x0 + 50, y0 + 20, x1 - 10, y1 - 20
        if not values:
            draw.text((left, top + 20), "no data yet", fill=(90, 90, 90))
            continue
        vmin, vmax = min(values), max(values)
        if vmax - vmin < 1e-12:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        smin, smax = min(steps), max(steps)
        span = max(smax - smin, 1)

        def to_xy(s, v, left=left, top=top, right=right, bottom=bottom, vmin=vmin, vmax=vmax,
                  smin=smin, span=span):
            return (left + (s - smin) / span * (right - left),
                    bottom - (v - vmin) / (vmax - vmin) * (bottom - top))

        draw.text((x0 + 4, top - 2), f"{vmax:.3g}", fill=(90, 90, 90))
        draw.text((x0 + 4, bottom - 10), f"{vmin:.3g}", fill=(90, 90, 90))
        draw.text((left, bottom + 4), f"step {smin}", fill=(90, 90, 90))
        draw.text((right - 70, bottom + 4), f"step {smax}", fill=(90, 90, 90))
        for index, (key, colour, points) in enumerate(curves):
            draw.text((right - 150, top + 14 * index), key, fill=colour)
            xy = [to_xy(s, v) for s, v in points]
            if len(xy) == 1:
                x, y = xy[0]
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
            elif xy:
                draw.line(xy, fill=colour, width=2)
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return (array.reshape(1, height, width, 3).float() / 255.0)


def plot_png(history: list[dict]) -> bytes:
    from PIL import Image

    pixels = (loss_plot(history)[0] * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# -- headless --
def train_headless(config: HeadlessConfig, log: Callable[[str], None] = print,
                   group=None) -> Outcome:
    """Load the checkpoint with ComfyUI's loader (or build the proving ground), train, save;
    progress goes to `log`. `group`: see run_training."""
    import comfy.sd

    log(f"loading {config.checkpoint} (ComfyUI device: "
        f"{comfy.model_management.get_torch_device()})")
    if config.checkpoint == PROVING_GROUND:
        from . import comfy_world

        model, clip = comfy_world.build_model(), comfy_world.build_clip()
    else:
        with torch.inference_mode(False):
            model, clip = comfy.sd.load_checkpoint_guess_config(
                config.checkpoint, output_vae=False, output_clip=True,
                embedding_directory=folder_paths.get_folder_paths("embeddings"))[:2]
    if model is None:
        raise TrainingError(f"{config.checkpoint}: no diffusion model found in this file")
    if clip is None:
        raise TrainingError(f"{config.checkpoint}: this checkpoint has no text encoder (CLIP)")
    settings = config.settings
    if settings.resume and not os.path.isabs(settings.resume) and config.checkpoint_dir:
        candidate = os.path.join(config.checkpoint_dir, settings.resume)
        if os.path.isfile(candidate):
            settings.resume = candidate
    started = time.perf_counter()

    def progress(p: Progress) -> None:
        if p.step % max(1, min(10, p.steps // 20 or 1)) and p.step != p.steps:
            return
        rate = p.step / max(time.perf_counter() - started, 1e-9)
        losses = ", ".join(f"{k} {v:.4g}" for k, v in p.losses.items())
        extra = ""
        if p.erase_activation is not None:
            extra = f", activation erase {p.erase_activation:.3g} / retain " \
                    f"{p.retain_activation:.3g}"
        log(f"step {p.step}/{p.steps}: {losses}{extra} ({rate:.2f} steps/s)")

    outcome = run_training(model, clip, settings, output_dir=config.output,
                           checkpoint_dir=config.checkpoint_dir, on_progress=progress, log=log,
                           group=group)
    if outcome.path:
        png = os.path.splitext(outcome.path)[0] + ".loss.png"
        with open(png, "wb") as handle:
            handle.write(plot_png(outcome.history))
        log(f"loss plot {png}")
    return outcome
