"""A tiny pixel-space eps-prediction DDPM UNet whose attention layers carry ComfyUI's SD names.

32x32 RGB images in [-1, 1] are pixel-unshuffled to 16x16x12. Module paths mirror ComfyUI's
SD1.x UNet (`input_blocks.N.1.transformer_blocks.0.attn2.to_k`, `middle_block.1...`,
`output_blocks.N.1...`), so code that targets SD cross-attention layers by name runs unchanged
here. Every projection is a plain nn.Linear called as a module, so forward hooks see it.
Cross-attention keys/values read the tiny CLIP's per-token states (width 128).
"""

import math

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

CONTEXT_DIM = 128
TRAIN_STEPS = 1000
HEAD_DIM = 32
WEIGHTS_FILE = "tiny_unet.safetensors"
_GROUPS = 8


class NoiseSchedule:
    """DDPM linear betas (1e-4 .. 0.02 over 1000 steps) and the DDIM update built on them."""

    def __init__(self, device: torch.device | str = "cpu"):
        betas = torch.linspace(1e-4, 0.02, TRAIN_STEPS, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    @staticmethod
    def ddim_timesteps(steps: int) -> list[int]:
        """Descending timesteps from 999 to 0, evenly spaced."""
        return torch.linspace(TRAIN_STEPS - 1, 0, steps).round().long().tolist()

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int | None):
        """Deterministic DDIM (eta 0) from level t to t_prev; None means to the clean image."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev is not None else torch.ones_like(a_t)
        x0 = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int, emb_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(_GROUPS, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, 1, 1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(_GROUPS, out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """SD-style attention; self-attention when no context is given."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context

        def split_heads(y: torch.Tensor) -> torch.Tensor:
            return y.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = (
            split_heads(self.to_q(x)),
            split_heads(self.to_k(context)),
            split_heads(self.to_v(context)),
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.to_out(out)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, heads, CONTEXT_DIM)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        heads = channels // HEAD_DIM
        self.norm = nn.GroupNorm(_GROUPS, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, heads)])
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Passes the time embedding to ResBlocks and the text context to transformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class TinyUNet(nn.Module):
    """eps = unet(x_t [N,3,32,32], t [N] in 0..999, context [N,L,128]).

    The network itself predicts velocity v = sqrt(a) eps - sqrt(1-a) x0 (trained on v-MSE) and
    `forward` returns eps = sqrt(a) v + sqrt(1-a) x_t. A plain eps network must reproduce x_t
    to ~1e-3 at high noise, where a tiny, briefly trained model systematically falls short and
    its samples stay noisy; the velocity form gets that part exactly right for free.
    """

    def __init__(self, channels: tuple[int, int] = (32, 96)):
        super().__init__()
        c1, c2 = channels
        emb = 4 * c1
        self.model_channels = c1
        schedule = NoiseSchedule().alphas_cumprod
        self.register_buffer("alphas_cumprod", schedule, persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(c1, emb), nn.SiLU(), nn.Linear(emb, emb))
        step = TimestepEmbedSequential
        self.input_blocks = nn.ModuleList(
            [
                step(nn.Conv2d(12, c1, 3, 1, 1)),  # 16x16
                step(ResBlock(c1, c1, emb), SpatialTransformer(c1)),
                step(Downsample(c1)),  # 8x8
                step(ResBlock(c1, c2, emb), SpatialTransformer(c2)),
                step(Downsample(c2)),  # 4x4
                step(ResBlock(c2, c2, emb)),
            ]
        )
        self.middle_block = step(
            ResBlock(c2, c2, emb), SpatialTransformer(c2), ResBlock(c2, c2, emb)
        )
        self.output_blocks = nn.ModuleList(
            [
                step(ResBlock(c2 + c2, c2, emb)),  # 4x4
                step(ResBlock(c2 + c2, c2, emb), SpatialTransformer(c2), Upsample(c2)),
                step(ResBlock(c2 + c2, c2, emb), SpatialTransformer(c2)),  # 8x8
                step(ResBlock(c2 + c1, c1, emb), Upsample(c1)),
                step(ResBlock(c1 + c1, c1, emb)),  # 16x16
                step(ResBlock(c1 + c1, c1, emb)),
            ]
        )
        self.out = nn.Sequential(nn.GroupNorm(_GROUPS, c1), nn.SiLU(), nn.Conv2d(c1, 12, 3, 1, 1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * self.velocity(x, t, context) + (1 - a).sqrt() * x

    def velocity(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h = F.pixel_unshuffle(x, 2)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return F.pixel_shuffle(self.out(h), 2)


def cross_attention_names(unet: nn.Module) -> list[str]:
    """Dotted names of every attn2 to_k / to_v Linear (UnHype's SD1.x targets)."""
    return [
        name for name, _ in unet.named_modules() if name.endswith((".attn2.to_k", ".attn2.to_v"))
    ]


def save_tiny_unet(unet: TinyUNet, path: str) -> None:
    save_file({k: v.detach().half().contiguous() for k, v in unet.state_dict().items()}, path)


def load_tiny_unet(path: str, device: str | torch.device = "cpu") -> TinyUNet:
    """Frozen (eval, no grad) TinyUNet from a file written by `save_tiny_unet`."""
    unet = TinyUNet()
    unet.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    unet.requires_grad_(False)
    return unet.eval().to(device)
