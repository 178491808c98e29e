"""The before/after grid: the same prompts and noise without and with a network, a row per
prompt. The demo draws it (unhype/demo.py) and the Trainer writes one beside every network it
saves (nodes/training/preview.py), for the network's page on a model host."""

import torch
from PIL import Image, ImageDraw, ImageFont


def render_grid(rows: list[tuple[str, str]], before: torch.Tensor, after: torch.Tensor,
                per_row: int, notes: list[str], cell: int = 96) -> Image.Image:
    """rows: (label, prompt), a label with "erased" in it drawn red, others green; before and
    after: [rows * per_row, 3, H, W] in 0..1; notes: lines under the grid."""
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=13)
    label_width, header, footer = 300, 30, 22 * len(notes) + 12
    width = label_width + 2 * per_row * cell + 12
    canvas = Image.new("RGB", (width, header + len(rows) * cell + footer), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((label_width, 6), "before (base model)", fill=(0, 0, 0), font=font)
    draw.text((label_width + per_row * cell + 12, 6), "after (UnHype)", fill=(0, 0, 0),
              font=font)
    for r, (label, prompt) in enumerate(rows):
        top = header + r * cell
        draw.text((8, top + cell // 2 - 20), label, font=font,
                  fill=(150, 0, 0) if "erased" in label else (0, 110, 0))
        draw.text((8, top + cell // 2 + 2), f'"{prompt}"'[:40], fill=(0, 0, 0), font=small)
        for k in range(per_row):
            for column, images in enumerate((before, after)):
                pixels = (images[r * per_row + k].clamp(0, 1).permute(1, 2, 0) * 255)
                tile = Image.fromarray(pixels.byte().cpu().numpy())
                # small images (the proving ground's 32 px) as pixels, large ones smoothed
                resample = Image.NEAREST if tile.width < cell else Image.LANCZOS
                left = label_width + column * (per_row * cell + 12) + k * cell
                canvas.paste(tile.resize((cell, cell), resample), (left, top))
    for index, note in enumerate(notes):
        draw.text((8, header + len(rows) * cell + 8 + 22 * index), note, fill=(40, 40, 40),
                  font=small)
    return canvas
