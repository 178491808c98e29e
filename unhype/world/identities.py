"""The identities world: 40 named "people" of the proving ground, for the celebrity protocol.

Each identity is one (colour, shape) of the 8 x 5 grid bound to a name and an alias, single BPE
tokens the colour world never used. The identities world is the colour world fine-tuned on
captions that also name identities ("a photo of anna"): the text tower learns the names (the
image tower stays frozen, so the judges keep seeing images as before), then the UNet learns to
draw them. Erasing a name while keeping the other 39 is the paper's celebrity test in small:
identities share colours and shapes, so the network must tell names apart, not colours.

Weights: `weights-identities/`; the recipe is in `unhype/world/__init__.py`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np

from .vocabulary import COLOURS, SHAPES, TEMPLATES

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights-identities")

# Single BPE tokens that appear nowhere in the colour world's captions.
_NAMES = (
    "anna bella clara dora elsa fiona greta hanna iris julia kara lena mira nina olga paula "
    "adam boris carl dean emil felix gus hugo ivan jack karl leo max nico oscar paul rex sam "
    "theo victor walter xavier yuri zack"
).split()
_ALIASES = (
    "alma bianca carmen daisy edith flora gina hazel ivy june kitty lola molly nora opal pearl "
    "abel bruno cedric dante eli flynn gordon harvey isaac jonas kurt lars milo ned otto percy "
    "quentin rufus tobias vince wes rosa sara tina"
).split()
_GRID_SEED = 7


@dataclass(frozen=True)
class Identity:
    name: str
    alias: str
    colour: int  # index into COLOURS
    shape: int  # index into SHAPES

    @property
    def looks(self) -> str:
        return f"{COLOURS[self.colour].word} {SHAPES[self.shape].word}"


def _identities() -> tuple[Identity, ...]:
    grid = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    random.Random(_GRID_SEED).shuffle(grid)
    return tuple(Identity(n, a, c, s) for n, a, (c, s) in zip(_NAMES, _ALIASES, grid, strict=True))


IDENTITIES = _identities()
BY_NAME = {i.name: i for i in IDENTITIES}
IDENTITY_OF = {(i.colour, i.shape): k for k, i in enumerate(IDENTITIES)}
# The celebrity protocol: erased sets are taken from the first half in order, the second half is
# always kept (and is the retain set, as the paper's "100 other celebrities").
ERASABLE, KEPT = IDENTITIES[:20], IDENTITIES[20:]

NAME_TEMPLATES = (
    "a photo of {name}",
    "{name}",
    "a picture of {name}",
    "an image of {name}",
    "a drawing of {name}",
    "a photo of {name} on a dark background",
    "a small picture of {name}",
    "one photo of {name}",
)
# Sentences no caption uses, from words the captions do use: held-out prompts.
NAME_PARAPHRASES = (
    "a dark image of {name}",
    "the picture is of {name}",
    "a drawing of one {name}",
    "a large photo of {name} in the picture",
)
NAME_CAPTION_RATE = 0.5


def name_caption(identity: Identity, rng: np.random.Generator) -> str:
    word = identity.name if rng.uniform() < 0.5 else identity.alias
    return NAME_TEMPLATES[rng.integers(len(NAME_TEMPLATES))].format(name=word)


def identity_vocabulary_texts() -> list[str]:
    """Every name caption training can produce (the text tower's new tokens)."""
    return [t.format(name=w) for i in IDENTITIES for w in (i.name, i.alias) for t in NAME_TEMPLATES]


@dataclass
class IdentityTask:
    """Erase these identities' names; the kept half is retained and measured.

    Same interface as `erasure.ErasureTask`, so the proving ground's trainer and measurements
    take either. Prompt sets: erased names, their aliases (generality: the hypernetwork never
    saw them), erased names in held-out sentences, the kept names, and the erased identities'
    looks described without a name ("a photo of a red circle"): a name's erasure should not
    take the colour and shape from everyone.
    """

    erase: list[str]

    def __post_init__(self):
        erasable = {i.name for i in ERASABLE}
        unknown = [n for n in self.erase if n not in erasable]
        if unknown or not self.erase:
            raise ValueError(f"identities to erase must be among {sorted(erasable)}, "
                             f"got {self.erase}")

    @property
    def kept(self) -> list[str]:
        return [i.name for i in KEPT]

    def training_templates(self) -> list[str]:
        return [t.format(name="{}") for t in NAME_TEMPLATES]

    def retain_prompts(self) -> list[str]:
        return [t.format(n) for n in self.kept for t in self.training_templates()]

    def prompt_sets(self) -> dict[str, list[tuple[str, int, int]]]:
        erased = [BY_NAME[n] for n in self.erase]

        def prompts(identities, templates, word):
            return [(t.format(name=word(i)), i.colour, i.shape)
                    for i in identities for t in templates]

        looks_templates = [t.replace("{colour} {shape}", "{name}") for t in TEMPLATES
                           if "{colour} {shape}" in t]
        return {
            "erased": prompts(erased, NAME_TEMPLATES, lambda i: i.name),
            "synonyms": prompts(erased, NAME_TEMPLATES, lambda i: i.alias),
            "paraphrases": prompts(erased, NAME_PARAPHRASES, lambda i: i.name),
            "others": prompts(KEPT, NAME_TEMPLATES, lambda i: i.name),
            "looks": prompts(erased, looks_templates, lambda i: i.looks),
        }


def make_identity_dataset(n: int, seed: int):
    """The colour world's dataset with about half the captions naming the image's identity
    (by name or alias, in NAME_TEMPLATES); identical for identical seeds."""
    from .data import make_dataset

    data = make_dataset(n, seed)
    rng = np.random.default_rng(seed + 1)
    for k in range(n):
        if rng.uniform() < NAME_CAPTION_RATE:
            colour, shape = int(data.colour[k]), int(data.shape[k])
            data.captions[k] = name_caption(IDENTITIES[IDENTITY_OF[colour, shape]], rng)
            data.caption_colour[k], data.caption_shape[k] = colour, shape
    return data


def identity_scores(before: dict, after: dict) -> dict[str, float]:
    """The celebrity protocol from `erasure.accuracies` of one task before and after erasure.

    Recognised = the CLIP judge finds both the identity's colour and its shape. As the paper:
    acc_erased, acc_kept and H_o = harmonic mean of (1 - acc_erased, acc_kept), raw. Relative
    to the base model on the same prompts and noise: kept (acc_kept / base, target >= 0.95),
    generality (share of the aliases' recognition removed), paraphrase efficacy, and how much
    of the erased identities' looks, asked for without a name, survive ("looks_kept").
    """

    def acc(name):
        return after[name]["identity"]

    def removed(name):
        base = before[name]["identity"]
        return max(0.0, min(1.0, 1 - acc(name) / base)) if base else 0.0

    forgot, kept = 1 - acc("erased"), acc("others")
    return {
        "acc_erased": acc("erased"),
        "acc_kept": kept,
        "h_o": 0.0 if min(forgot, kept) <= 0 else 2 * forgot * kept / (forgot + kept),
        "kept_vs_base": min(1.0, kept / max(before["others"]["identity"], 1e-9)),
        "efficacy": removed("erased"),
        "generality": removed("synonyms"),
        "paraphrase_efficacy": removed("paraphrases"),
        "looks_kept": min(1.0, acc("looks") / max(before["looks"]["identity"], 1e-9)),
    }
