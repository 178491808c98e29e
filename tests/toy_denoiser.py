"""A small but real text-conditioned denoiser implementing the `Denoiser` protocol, for fast tests.

Words map to fixed random vectors; the network attends from x to the prompt's word vectors
through `block.attn2.to_k` / `block.attn2.to_v`, named like ComfyUI's SD UNet so presets apply.
"""

import hashlib

import torch
from torch import nn

WIDTH, CHANNELS, TOKENS = 16, 8, 6


def word_vector(word: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
    return torch.randn(WIDTH, generator=torch.Generator().manual_seed(seed))


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(CHANNELS, WIDTH, bias=False)
        self.to_k = nn.Linear(WIDTH, WIDTH, bias=False)
        self.to_v = nn.Linear(WIDTH, WIDTH, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(WIDTH, CHANNELS)])

    def forward(self, x, context):
        q = self.to_q(x)[:, None]
        weights = torch.softmax(q @ self.to_k(context).transpose(1, 2) / WIDTH**0.5, dim=-1)
        return self.to_out[0]((weights @ self.to_v(context))[:, 0])


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Module()
        self.block.attn2 = CrossAttention()
        self.time = nn.Linear(1, CHANNELS)

    def forward(self, x, t, context):
        return x + self.time(t[:, None].float()) + self.block.attn2(x, context)


class ToyDenoiser:
    def __init__(self, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lora_root = ToyNet().requires_grad_(False)
        self.device = torch.device("cpu")

    def context(self, prompt: str) -> torch.Tensor:
        words = (prompt.lower().split() + ["<end>"] * TOKENS)[:TOKENS]
        return torch.stack([word_vector(w) for w in words])

    def embed(self, prompts):
        return torch.stack([self.context(p).mean(0) for p in prompts])

    def sample_xt(self, prompts, count, generator):
        rows = [p for p in prompts for _ in range(count)]
        x = torch.randn(len(rows), CHANNELS, generator=generator)
        t = torch.rand(len(rows), generator=generator)
        return self.predict(x, t, rows).detach(), t

    def predict(self, x_t, t, prompts):
        return self.lora_root(x_t, t, torch.stack([self.context(p) for p in prompts]))
