"""Synthetic captioned images: one coloured shape on a dark background, 32x32 RGB.

Every colour and shape has a main word and synonyms, all single BPE tokens, so erasure can be
trained on main words and its generality measured on synonyms. Captions come from TEMPLATES;
PARAPHRASES are sentence templates never used in any training caption (built only from words
that the captions do use, so the text tower has seen every token) for held-out prompt tests.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .vocabulary import (
    COLOUR_ONLY_TEMPLATES,
    COLOURS,
    SHAPE_ONLY_TEMPLATES,
    SHAPES,
    TEMPLATES,
    Concept,
)

IMAGE_SIZE = 32
SHAPE_SIZES = (6.0, 11.0)  # range of a shape's half-extent in pixels


PARTIAL_CAPTION_RATE = 0.15
MAIN_WORD_RATE = 0.5


@dataclass
class Dataset:
    images: torch.Tensor  # uint8 [N, 3, 32, 32]
    captions: list[str]
    colour: torch.Tensor  # int64 [N], index into COLOURS
    shape: torch.Tensor  # int64 [N], index into SHAPES
    # What each caption names: -1 where the caption leaves that attribute out.
    caption_colour: torch.Tensor
    caption_shape: torch.Tensor


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float32 in [0, 1], the format every world model takes."""
    return images.float() / 255.0


def shape_mask(shape: str, cy: float, cx: float, size: float) -> np.ndarray:
    """Soft (anti-aliased) coverage in [0, 1] of one shape; `size` is its half-extent."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    dy, dx = y - cy, x - cx
    if shape == "circle":
        inside = size - np.hypot(dy, dx)
    elif shape == "square":
        inside = size * 0.85 - np.maximum(np.abs(dy), np.abs(dx))
    elif shape == "triangle":
        # Upward triangle: apex at top, base at bottom.
        height = 1.8 * size
        top = cy - height / 2
        rel = (y - top) / height  # 0 at apex, 1 at base
        half_width = rel * size
        inside = np.minimum(np.minimum(y - top, top + height - y), half_width - np.abs(dx))
    elif shape == "cross":
        arm = max(size * 0.3, 1.5)
        bar_h = np.minimum(arm - np.abs(dy), size - np.abs(dx))
        bar_v = np.minimum(arm - np.abs(dx), size - np.abs(dy))
        inside = np.maximum(bar_h, bar_v)
    elif shape == "ring":
        radius = np.hypot(dy, dx)
        thickness = max(size * 0.3, 1.5)
        inside = thickness / 2 - np.abs(radius - (size - thickness / 2))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(inside + 0.5, 0.0, 1.0)


def render(colour: int, shape: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [3, 32, 32] image of SHAPES[shape] in COLOURS[colour], randomly placed."""
    size = rng.uniform(*SHAPE_SIZES)
    margin = size + 1.0
    cy, cx = rng.uniform(margin, IMAGE_SIZE - margin, size=2)
    mask = shape_mask(SHAPES[shape].word, cy, cx, size)[None]
    background = rng.uniform(5, 45) * (0.6 + 0.4 * rng.uniform(size=(3, 1, 1)))
    fill = np.asarray(COLOURS[colour].rgb, np.float32)[:, None, None]
    fill = fill * rng.uniform(0.85, 1.05) + rng.normal(0, 8, size=(3, 1, 1))
    image = background * (1 - mask) + fill * mask
    image = image + rng.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def _caption(colour: int, shape: int, rng: np.random.Generator) -> tuple[str, int, int]:
    def pick(concept: Concept) -> str:
        if rng.uniform() < MAIN_WORD_RATE:
            return concept.word
        return concept.synonyms[rng.integers(len(concept.synonyms))]

    colour_word, shape_word = pick(COLOURS[colour]), pick(SHAPES[shape])
    roll = rng.uniform()
    if roll < PARTIAL_CAPTION_RATE / 2:
        template = COLOUR_ONLY_TEMPLATES[rng.integers(len(COLOUR_ONLY_TEMPLATES))]
        return template.format(colour=colour_word), colour, -1
    if roll < PARTIAL_CAPTION_RATE:
        template = SHAPE_ONLY_TEMPLATES[rng.integers(len(SHAPE_ONLY_TEMPLATES))]
        return template.format(shape=shape_word), -1, shape
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(colour=colour_word, shape=shape_word), colour, shape


def make_dataset(n: int, seed: int) -> Dataset:
    """n images with balanced random colour/shape labels; identical for identical seeds."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(len(COLOURS), size=n)
    shapes = rng.integers(len(SHAPES), size=n)
    images = np.stack([render(c, s, rng) for c, s in zip(colours, shapes, strict=True)])
    captions, caption_colour, caption_shape = zip(
        *(_caption(c, s, rng) for c, s in zip(colours, shapes, strict=True)), strict=True
    )
    return Dataset(
        images=torch.from_numpy(images),
        captions=list(captions),
        colour=torch.from_numpy(colours).long(),
        shape=torch.from_numpy(shapes).long(),
        caption_colour=torch.tensor(caption_colour),
        caption_shape=torch.tensor(caption_shape),
    )


def training_vocabulary_texts() -> list[str]:
    """Every template filled with every word: the finite set of texts training can produce."""
    texts = [""]
    for colour in COLOURS:
        for colour_word in colour.words:
            texts += [t.format(colour=colour_word) for t in COLOUR_ONLY_TEMPLATES]
            for shape in SHAPES:
                for shape_word in shape.words:
                    texts += [t.format(colour=colour_word, shape=shape_word) for t in TEMPLATES]
    for shape in SHAPES:
        for shape_word in shape.words:
            texts += [t.format(shape=shape_word) for t in SHAPE_ONLY_TEMPLATES]
    return texts
