"""Judges that say which colour / shape an image shows.

Two independent judges of each, because the CLIP judge is harsher on generated blobs than on
clean renders: a zero-shot tiny-CLIP classifier (colour and shape) and pixel judges that do
not depend on any trained model: colour = mean of the most saturated pixels -> nearest palette
colour; shape = best match of the foreground against every shape at every place and size the
world draws. The pixel shape judge is colour-blind: the tiny CLIP only ever saw saturated shapes
and names the shape of a grey copy of the base model's images in under a fifth of them, so it
cannot say whether an erased (pale) picture kept its shape.
"""

import numpy as np
import torch

from .data import IMAGE_SIZE, SHAPE_SIZES, shape_mask
from .tiny_clip import TinyClip
from .vocabulary import COLOURS, SHAPES, TEMPLATES

SATURATED_PIXELS = 24  # fewer than the smallest shape covers
_CLASS_TEMPLATES = TEMPLATES[:6]


def _class_embeddings(clip: TinyClip, prompts_per_class: list[list[str]]) -> torch.Tensor:
    """Prompt-ensemble class embeddings: mean of unit text embeddings, renormalised."""
    with torch.no_grad():
        means = [clip.encode_text(prompts).mean(0) for prompts in prompts_per_class]
    return torch.nn.functional.normalize(torch.stack(means), dim=-1)


class Judge:
    """Classifies float images [N, 3, 32, 32] in [0, 1]; every method returns class indices."""

    def __init__(self, clip: TinyClip):
        self.clip = clip
        self.colour_classes = _class_embeddings(
            clip,
            [
                [t.format(colour=c.word, shape=s.word) for t in _CLASS_TEMPLATES for s in SHAPES]
                for c in COLOURS
            ],
        )
        self.shape_classes = _class_embeddings(
            clip,
            [
                [t.format(colour=c.word, shape=s.word) for t in _CLASS_TEMPLATES for c in COLOURS]
                for s in SHAPES
            ],
        )
        self.palette = torch.tensor([c.rgb for c in COLOURS], dtype=torch.float32) / 255.0
        self.shape_templates, self.template_shape = _shape_templates()

    @torch.no_grad()
    def clip_colour(self, images: torch.Tensor) -> torch.Tensor:
        return (self.clip.encode_image(images) @ self.colour_classes.T).argmax(-1).cpu()

    @torch.no_grad()
    def clip_shape(self, images: torch.Tensor) -> torch.Tensor:
        return (self.clip.encode_image(images) @ self.shape_classes.T).argmax(-1).cpu()

    @torch.no_grad()
    def clip_colour_and_shape(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`clip_colour` and `clip_shape` from one pass of the image tower."""
        encoded = self.clip.encode_image(images)
        return ((encoded @ self.colour_classes.T).argmax(-1).cpu(),
                (encoded @ self.shape_classes.T).argmax(-1).cpu())

    def pixel_colour(self, images: torch.Tensor) -> torch.Tensor:
        """Nearest palette colour to the mean of the most saturated pixels of each image."""
        pixels = images.detach().float().cpu().flatten(2).transpose(1, 2)  # [N, HW, 3]
        saturation = pixels.amax(-1) - pixels.amin(-1)
        top = saturation.topk(SATURATED_PIXELS, dim=1).indices
        mean_rgb = torch.gather(pixels, 1, top[..., None].expand(-1, -1, 3)).mean(1)
        return torch.cdist(mean_rgb, self.palette).argmin(-1)

    def pixel_shape(self, images: torch.Tensor) -> torch.Tensor:
        """The shape whose best-placed template correlates most with the image's foreground
        (each pixel's colour distance from the border's median colour)."""
        pixels = images.detach().float().cpu()
        border = torch.cat([pixels[..., 0, :], pixels[..., -1, :],
                            pixels[..., :, 0], pixels[..., :, -1]], dim=-1)
        background = border.median(-1).values[..., None, None]
        foreground = _centred_unit((pixels - background).norm(dim=1).flatten(1))
        match = foreground @ self.shape_templates.T
        best = torch.stack([match[:, self.template_shape == s].amax(1)
                            for s in range(len(SHAPES))], dim=1)
        return best.argmax(-1)


def _centred_unit(rows: torch.Tensor) -> torch.Tensor:
    rows = rows - rows.mean(1, keepdim=True)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _shape_templates() -> tuple[torch.Tensor, torch.Tensor]:
    """Every shape at every whole-pixel size (one either side of the world's range) and place
    that fits the image, flattened, centred and unit-norm, with the shape index of each."""
    masks, shapes = [], []
    low, high = SHAPE_SIZES
    for index, shape in enumerate(SHAPES):
        for size in np.arange(np.floor(low) - 1, np.ceil(high) + 1.5):
            for cy in np.arange(size, IMAGE_SIZE - size + 0.5):
                for cx in np.arange(size, IMAGE_SIZE - size + 0.5):
                    masks.append(shape_mask(shape.word, cy, cx, size).ravel())
                    shapes.append(index)
    return _centred_unit(torch.from_numpy(np.stack(masks)).float()), torch.tensor(shapes)
