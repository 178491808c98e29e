"""Judges that say which colour / shape an image shows.

Two independent colour judges, because the CLIP judge is harsher on generated blobs than on
clean renders: a zero-shot tiny-CLIP classifier (colour and shape) and a pixel judge (mean of
the most saturated pixels -> nearest palette colour) that does not depend on any trained model.
"""

import torch

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
