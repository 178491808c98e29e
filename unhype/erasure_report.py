"""What an Erasure Check shows: its text report and its image grid (scores in the header, every
pair captioned with what the judge saw and its verdict). The report ends with the check's JSON
block for the network's card (unhype/card.py): the node cannot write into the network file."""

import math

import torch
import torch.nn.functional as F

from .card import erasure_check_block, erasure_check_json
from .erasure_check import CheckResult, Pair
from .judges import to_channels_first


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def report(result: CheckResult) -> str:
    counted = [p for p in result.erased if p.counted]
    lines = [
        f"UnHype Erasure Check: judge {result.judge}; erased concept: {result.concept}",
        f"efficacy {_percent(result.efficacy)}: {sum(p.good for p in counted)} of "
        f"{len(counted)} originals that show {result.concept} lost it with UnHype"
        + (f" ({len(result.erased) - len(counted)} originals without it not counted)"
           if len(counted) < len(result.erased) else ""),
    ]
    if result.kept:
        lines.append(f"specificity {_percent(result.specificity)}: "
                     f"{sum(p.good for p in result.kept)} of {len(result.kept)} kept prompts' "
                     "images show what the original showed")
    else:
        lines.append("specificity n/a: no kept prompts' images connected")
    lines += result.notes
    for title, pairs in (("erased prompts", result.erased), ("kept prompts", result.kept)):
        if pairs:
            lines.append(f"{title}:")
            lines += [f"  #{i + 1}: original {p.original} -> UnHype {p.unhype}: {p.verdict}"
                      for i, p in enumerate(pairs)]
    lines.append(erasure_check_json(block(result)))
    return "\n".join(lines)


def block(result: CheckResult) -> dict:
    """The check as a network's evaluation records it (unhype/card.py)."""
    return erasure_check_block(result.judge, result.concept, result.efficacy, result.specificity,
                               len(result.erased), len(result.kept))


# -- the grid ----------------------------------------------------------------------------------

GOOD, BAD, NEUTRAL = (60, 200, 90), (235, 60, 60), (160, 160, 160)


def _colour(pair: Pair) -> tuple[int, int, int]:
    return NEUTRAL if not pair.counted else GOOD if pair.good else BAD


def grid(result: CheckResult, base: torch.Tensor, unhype: torch.Tensor,
         kept_base: torch.Tensor | None = None, kept_unhype: torch.Tensor | None = None,
         tile: int = 128, columns: int = 8) -> torch.Tensor:
    """One IMAGE [1, H, W, 3]: a header with the scores, then per pair the original above the
    UnHype image, each captioned with what the judge saw, the verdict coloured."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    caption, label_width, header, gap = 32, 120, 40, 4
    rows = [("erased prompts", base, unhype, result.erased)]
    if result.kept:
        rows.append(("kept prompts", kept_base, kept_unhype, result.kept))
    blocks = [(title, b, u, pairs[start:start + columns], start)
              for title, b, u, pairs in rows for start in range(0, len(pairs), columns)]
    width = label_width + min(columns, max(len(r[3]) for r in rows)) * (tile + gap)
    height = header + len(blocks) * 2 * (tile + caption)
    canvas = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), f"judge: {result.judge}; erased: {result.concept}", fill=(230, 230, 230),
              font=font)
    draw.text((8, 22), f"efficacy {_percent(result.efficacy)}   specificity "
              f"{_percent(result.specificity) if result.kept else 'n/a'}", fill=(230, 230, 230),
              font=font)

    def picture(image: torch.Tensor) -> Image.Image:
        pixels = to_channels_first(image[None])
        pixels = F.interpolate(pixels, size=(tile, tile),
                               mode="nearest" if pixels.shape[-1] < tile else "area")
        array = (pixels[0].movedim(0, -1) * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(array)

    top = header
    for title, originals, unhyped, pairs, start in blocks:
        for row, images in (("original", originals), ("UnHype", unhyped)):
            draw.text((8, top + tile // 2 - 12), title, fill=(200, 200, 200), font=font)
            draw.text((8, top + tile // 2 + 4), row, fill=(200, 200, 200), font=font)
            for k, pair in enumerate(pairs):
                left = label_width + k * (tile + gap)
                canvas.paste(picture(images[start + k]), (left, top))
                seen = pair.original if row == "original" else pair.unhype
                draw.text((left + 4, top + tile + 2), f"#{start + k + 1} {seen}"[:20],
                          fill=(220, 220, 220), font=font)
                if row == "UnHype":
                    draw.text((left + 4, top + tile + 16), pair.verdict, fill=_colour(pair),
                              font=font)
            top += tile + caption
    return torch.from_numpy(np.asarray(canvas).copy()).float().div(255)[None]
