"""Erasure measured end to end in the proving ground, with the same code path as the nodes.

Mirrors the paper's object protocol on colours: efficacy (the erased colour is no longer
generated for its own prompts), specificity (other colours intact), generality (synonyms held out
from the hypernetwork's training are erased too), H_o = their harmonic mean, plus prompts in
sentence templates never seen in any training (paraphrases). Images are judged by the tiny CLIP
zero-shot and by the independent pixel judge.

Scores are relative to the base model on the same prompts and the same noise (paired): the tiny
model does not paint every prompt's colour, so raw accuracies are reported alongside.
"""

import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..choices import PROVING_GROUND
from ..factors import FactorCache
from ..families import family
from ..hypernet import RowFactors
from ..lora import row_lora
from ..network import NetworkInfo, UnHypeNetwork
from ..prompts import builtin_retain_prompts
from ..settings import TrainingSettings, build_configs, trigger_kind
from ..targets import targets_from_preset
from ..training import Trainer
from ..trigger import measure_trigger, read_trigger
from . import World
from .vocabulary import COLOURS, PARAPHRASES, SHAPES, TEMPLATES

COLOUR_INDEX = {c.word: i for i, c in enumerate(COLOURS)}
FAMILY = PROVING_GROUND
COLOUR_ETA = family(FAMILY).training_defaults["eta"]


@dataclass
class ErasureTask:
    """Which colours to erase; every prompt set follows from that."""

    erase: list[str]

    def __post_init__(self):
        unknown = [c for c in self.erase if c not in COLOUR_INDEX]
        if unknown or not self.erase:
            raise ValueError(
                f"colours to erase must be among {list(COLOUR_INDEX)}, got {self.erase}"
            )

    @property
    def kept(self) -> list[str]:
        return [c.word for c in COLOURS if c.word not in self.erase]

    def training_templates(self) -> list[str]:
        """Caption templates with the colour slot left open, main shape words only."""
        return [t.format(colour="{}", shape=s.word) for t in TEMPLATES for s in SHAPES]

    def retain_prompts(self) -> list[str]:
        return [fill_colour(t, c) for c in self.kept for t in self.training_templates()]

    def prompt_sets(self) -> dict[str, list[tuple[str, int, int]]]:
        """(prompt, intended colour index, intended shape index) per evaluation set."""

        def prompts(words, templates, colour_of):
            return [
                (t.format(colour=w, shape=s.word), COLOUR_INDEX[colour_of(w)], index)
                for w in words for t in templates for index, s in enumerate(SHAPES)
            ]

        synonym_of = {syn: c.word for c in COLOURS for syn in c.synonyms}
        synonyms = [s for c in COLOURS if c.word in self.erase for s in c.synonyms]
        return {
            "erased": prompts(self.erase, TEMPLATES, lambda w: w),
            "synonyms": prompts(synonyms, TEMPLATES, synonym_of.get),
            "paraphrases": prompts(self.erase, PARAPHRASES, lambda w: w),
            "others": prompts(self.kept, TEMPLATES, lambda w: w),
        }


def fill_colour(template: str, colour: str) -> str:
    return template.format(colour)


# -- ways of changing the world's model at sampling time --------------------------------------

SamplingPatch = Callable[[list[str], torch.Tensor], object]


def unhype_patch(world: World, network: UnHypeNetwork, strength: float = 1.0) -> SamplingPatch:
    """Per-row LoRA on the conditional rows only, factors and gate from Apply Dynamic LoRA's
    own provider (unhype/factors.py): the nodes' "conditional only" mode."""
    cache = FactorCache(network)

    @contextmanager
    def patch(row_prompts: list[str], cond_mask: torch.Tensor):
        rows = cond_mask.nonzero().flatten().cpu()
        embeddings = read_trigger(world.denoiser, [row_prompts[i] for i in rows.tolist()],
                                  network.config.trigger, network.config.trigger_skip)
        kept, factors = cache.select(embeddings, world.denoiser.device, torch.float32)
        rows = rows[kept]  # the gate: rows whose prompt does not trigger get no LoRA (no hook)
        with row_lora(world.unet, network.targets, factors, rows=rows, scale=strength,
                      norm_cap=network.config.norm_cap):
            yield

    return patch


@dataclass
class StaticLoRA:
    """An ordinary LoRA (one set of factors for every prompt), the ESD-x baseline."""

    targets: list
    factors: dict[str, RowFactors]

    def patch(self, world: World) -> SamplingPatch:
        @contextmanager
        def patch(row_prompts: list[str], cond_mask: torch.Tensor):
            rows = len(row_prompts)
            expanded = {n: RowFactors(f.down.expand(rows, -1, -1), f.up.expand(rows, -1, -1))
                        for n, f in self.factors.items()}
            with row_lora(world.unet, self.targets, expanded):
                yield

        return patch


# -- training ---------------------------------------------------------------------------------

def unhype_trainer(world: World, task: ErasureTask, *, anchor: str = "",
                   **settings) -> Trainer:
    """The UnHype Trainer for the world, with the UnHype Trainer's defaults for the
    proving-ground family (unhype/settings.py) unless `settings` (Trainer settings) say
    otherwise: the caption templates with main shape words, the other colours as retain prompts
    (plus the built-in retain list with `builtin_retain=True`), `anchor` for every colour in the
    erase prompt's place of it ("": the prompt without the colour)."""
    settings = TrainingSettings(
        concepts="\n".join(f"{colour} -> {anchor}" for colour in task.erase), preset="custom",
        templates="\n".join(task.training_templates()),
        **{"builtin_retain": False, **settings}).validate()
    retain = task.retain_prompts() + (builtin_retain_prompts() if settings.builtin_retain else [])
    trigger = measure_trigger(world.denoiser, trigger_kind(settings, FAMILY))
    net_config, config = build_configs(settings, FAMILY, retain, trigger)
    config.log_every = 25
    preset = settings.resolve(FAMILY)["target_preset"]
    targets = targets_from_preset(world.unet, preset)
    info = NetworkInfo(FAMILY, preset, title=f"proving ground: erase {', '.join(task.erase)}",
                       embedding_source=family(FAMILY).trigger_source(trigger.kind,
                                                                      trigger.width))
    return Trainer(world.denoiser, net_config, targets, info, config)


def train_unhype(world: World, task: ErasureTask, *, anchor: str = "", on_progress=None,
                 **settings) -> tuple[UnHypeNetwork, dict]:
    """An UnHype network for the world trained by `unhype_trainer`'s Trainer."""
    result = unhype_trainer(world, task, anchor=anchor, **settings).run(on_progress=on_progress)
    return result.network, {"seconds": result.seconds, "xt_samplings": result.xt_samplings,
                            "xt_seconds": result.xt_seconds, "history": result.history}


def train_static_esd(world: World, task: ErasureTask, *, steps: int = 300, seed: int = 0,
                     rank: int = 4, learning_rate: float = 3e-3,
                     eta: float = COLOUR_ETA) -> StaticLoRA:
    """Plain ESD-x: one rank-r LoRA on the cross-attention k/v, no retention term."""
    targets = targets_from_preset(world.unet, "sd-cross-kv")
    generator = torch.Generator().manual_seed(seed)
    factors = {
        t.name: RowFactors(
            (torch.randn(1, rank, t.in_features, generator=generator) / t.in_features**0.5)
            .requires_grad_(True),
            torch.zeros(1, t.delta_features, rank, requires_grad=True),
        )
        for t in targets
    }
    optimizer = torch.optim.Adam([x for f in factors.values() for x in (f.down, f.up)],
                                 lr=learning_rate)
    templates, picker = task.training_templates(), random.Random(seed)
    pool = []
    for _ in range(steps):
        if len(pool) < 32:
            prompt = fill_colour(picker.choice(templates), picker.choice(task.erase))
            x_t, t = world.denoiser.sample_xt([prompt], 1, generator)
            pool.append((x_t, t, prompt))
        x_t, t, prompt = pool[picker.randrange(len(pool))]
        with torch.no_grad():
            anchored = world.denoiser.predict(x_t, t, [""])
            concept = world.denoiser.predict(x_t, t, [prompt])
            target = anchored - eta * (concept - anchored)
        with row_lora(world.unet, targets, factors):
            predicted = world.denoiser.predict(x_t, t, [prompt])
        loss = torch.nn.functional.mse_loss(predicted, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    frozen = {n: RowFactors(f.down.detach(), f.up.detach()) for n, f in factors.items()}
    return StaticLoRA(targets, frozen)


# -- measuring --------------------------------------------------------------------------------

def generate(world: World, prompts: list[str], seed: int, patch: SamplingPatch | None = None,
             batch: int = 64, steps: int = 25, guidance: float = 4.0) -> torch.Tensor:
    """Images for the prompts; the same seed gives the same noise with or without a patch."""
    images = []
    for start in range(0, len(prompts), batch):
        generator = torch.Generator().manual_seed(seed + start)
        images.append(world.denoiser.sample(prompts[start:start + batch], generator, steps=steps,
                                            guidance=guidance, unet_context=patch))
    return torch.cat(images)


def draw_prompts(task: ErasureTask, per_set: int,
                 seed: int) -> dict[str, list[tuple[str, int, int]]]:
    picker = random.Random(seed)
    return {name: [picker.choice(items) for _ in range(per_set * (3 if name == "others" else 1))]
            for name, items in task.prompt_sets().items()}


def judge_accuracy(world: World, images: torch.Tensor, colours: list[int],
                   shapes: list[int]) -> dict[str, float]:
    """Prompted colour and prompted shape by both judges ("shape": CLIP's, "pixel_shape"), and
    both colour and shape by the CLIP judge ("identity": the identities world's recognition)."""
    colour, shape = torch.tensor(colours), torch.tensor(shapes)
    clip_colour, clip_shape = world.judge.clip_colour_and_shape(images)
    colour_ok, shape_ok = clip_colour == colour, clip_shape == shape
    return {
        "clip": float(colour_ok.float().mean()),
        "pixel": float((world.judge.pixel_colour(images) == colour).float().mean()),
        "shape": float(shape_ok.float().mean()),
        "pixel_shape": float((world.judge.pixel_shape(images) == shape).float().mean()),
        "identity": float((colour_ok & shape_ok).float().mean()),
    }


def accuracies(world: World, drawn: dict, seed: int, patch: SamplingPatch | None = None,
               on_set: Callable[[int], None] | None = None,
               names: Sequence[str] | None = None, images: dict | None = None) -> dict:
    """Share of images in each set that show the prompt's colour, per judge. `names`: only
    these sets, each with the noise it gets among all (so sets can be measured apart); each
    set's images go to `images` (by set name) when it is given."""
    result = {}
    for index, (name, items) in enumerate(drawn.items()):
        if names is not None and name not in names:
            continue
        generated = generate(world, [p for p, _, _ in items], seed + 100_000 * index, patch)
        if images is not None:
            images[name] = generated
        result[name] = judge_accuracy(world, generated, [c for _, c, _ in items],
                                      [s for _, _, s in items])
        if on_set:
            on_set(index)
    return result


def identical_share(before: torch.Tensor, after: torch.Tensor) -> float:
    """Share of images in `after` bit-identical to the same row of `before` (same prompt, seed)."""
    return float((before == after).flatten(1).all(dim=1).float().mean())


def _harmonic(values: list[float]) -> float:
    return 0.0 if min(values) <= 0 else len(values) / sum(1 / v for v in values)


def scores(before: dict, after: dict, judge: str) -> dict[str, float]:
    """Efficacy, specificity, generality, paraphrase efficacy and H_o relative to the base, and
    how much of the erased prompts' shape survives ("shape_kept", by the same kind of judge:
    the CLIP shape judge for "clip", the colour-blind pixel shape judge for "pixel")."""

    def removed(name):
        base = before[name][judge]
        return max(0.0, min(1.0, 1 - after[name][judge] / base)) if base else 0.0

    def kept(name, key):
        return min(1.0, after[name][key] / max(before[name][key], 1e-9))

    specificity = kept("others", judge)
    efficacy, generality = removed("erased"), removed("synonyms")
    return {
        "efficacy": efficacy,
        "specificity": specificity,
        "generality": generality,
        "paraphrase_efficacy": removed("paraphrases"),
        "h_o": _harmonic([efficacy, specificity, generality]),
        "shape_kept": kept("erased", "shape" if judge == "clip" else "pixel_shape"),
    }
