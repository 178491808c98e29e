"""The Trainer's loss plot: the node's IMAGE output and the headless trainer's .loss.png."""

import io
import math

import torch


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
