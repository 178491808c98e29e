"""The hypernetwork: prompt trigger vector (+ trajectory position s) -> LoRA factors per layer.

Paper form (PAPER.md): for each target layer, A(c,s) = alpha(s)·(A0 + s/T·headA(c,s)) and
B(c,s) = s/T·headB(c,s), alpha(s) = alpha0 + s/T·alpha_learned. A0 is fixed and random, so the
LoRA delta B·A is exactly zero at s = 0 for every prompt; inference uses s = T.
Two generators produce the raw heads: "paper" (two 2-layer MLPs per layer, no sharing) and
"compact" (one shared trunk, a learned code per layer, output heads shared by layers of one shape).
"""

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .targets import Target
from .trigger import TRIGGERS

VARIANTS = ("paper", "compact")


@dataclass
class HyperNetConfig:
    embed_dim: int = 768  # width of the trigger vector the network reads
    trigger: str = "clip-pooled"  # unhype/trigger.py
    trigger_skip: int = 0  # "cond-pooled": leading conditioning rows every prompt shares
    input_projection: int = 0  # a learned down-projection of the trigger to this width; 0: none
    rank: int = 6
    hidden: int = 512
    trajectory_length: int = 300
    fourier_dim: int = 32
    alpha0: float = 1.0
    norm_cap: float | None = 80.0
    variant: str = "paper"
    compact_trunk: int = 256
    compact_code: int = 128
    compact_layer_embed: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("embed_dim", "rank", "hidden", "trajectory_length", "fourier_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.trigger!r}")
        if self.trigger_skip < 0 or self.input_projection < 0:
            raise ValueError("trigger_skip and input_projection must be >= 0")
        if self.fourier_dim % 2:
            raise ValueError(f"fourier_dim must be even, got {self.fourier_dim}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HyperNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown hypernetwork settings {unknown}")
        return cls(**data)

    @property
    def feature_dim(self) -> int:
        """Width of what the heads read of the prompt: the trigger, projected or not."""
        return self.input_projection or self.embed_dim


@dataclass
class RowFactors:
    """LoRA factors for one layer, one set per batch row: delta_b = up_b @ down_b."""

    down: torch.Tensor  # [rows, rank, in_features]   (A)
    up: torch.Tensor  # [rows, delta_features, rank]  (B)


Factors = dict[str, RowFactors]


def fourier_features(fraction: torch.Tensor, dim: int) -> torch.Tensor:
    """sin/cos of s/T at 1..dim/2 half-turns: smooth in s, so neighbouring steps share features."""
    freqs = math.pi * torch.arange(1, dim // 2 + 1, device=fraction.device, dtype=fraction.dtype)
    angles = fraction[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _mlp(in_dim: int, hidden: int, out_dim: int, zero_last: bool = False) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    if zero_last:
        nn.init.zeros_(net[2].weight)
        nn.init.zeros_(net[2].bias)
    return net


class PaperGenerator(nn.Module):
    """One pair of 2-layer MLP heads per target layer, as in the authors' code."""

    def __init__(self, config: HyperNetConfig, targets: list[Target]):
        super().__init__()
        width, r = config.feature_dim + config.fourier_dim, config.rank
        # Zero-initialised last layers: training starts from "no change along the trajectory"
        # (delta 0 and A = A0 for every s), so no early steps go to undoing a random init.
        self.down_heads = nn.ModuleList(
            _mlp(width, config.hidden, t.in_features * r, zero_last=True) for t in targets
        )
        self.up_heads = nn.ModuleList(
            _mlp(width, config.hidden, t.delta_features * r, zero_last=True) for t in targets
        )

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (down(features), up(features))
            for down, up in zip(self.down_heads, self.up_heads, strict=True)
        ]


class CompactGenerator(nn.Module):
    """Text-to-LoRA style: shared trunk, learned per-layer code, heads shared per layer shape."""

    def __init__(self, config: HyperNetConfig, targets: list[Target]):
        super().__init__()
        r = config.rank
        self.trunk = nn.Sequential(
            nn.Linear(config.feature_dim + config.fourier_dim, config.compact_trunk),
            nn.ReLU(),
            nn.Linear(config.compact_trunk, config.compact_trunk),
            nn.ReLU(),
        )
        self.layer_embed = nn.Parameter(torch.randn(len(targets), config.compact_layer_embed))
        self.mix = nn.Sequential(
            nn.Linear(config.compact_trunk + config.compact_layer_embed, config.compact_code),
            nn.ReLU(),
        )
        shapes = sorted({(t.in_features, t.delta_features) for t in targets})
        self.shape_index = [shapes.index((t.in_features, t.delta_features)) for t in targets]
        self.down_heads = nn.ModuleList(nn.Linear(config.compact_code, i * r) for i, _ in shapes)
        self.up_heads = nn.ModuleList(nn.Linear(config.compact_code, o * r) for _, o in shapes)
        for head in [*self.down_heads, *self.up_heads]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        trunk = self.trunk(features)  # [R, trunk]
        rows, layers = trunk.shape[0], self.layer_embed.shape[0]
        joint = torch.cat(
            [trunk[:, None].expand(rows, layers, -1), self.layer_embed.expand(rows, -1, -1)], -1
        )
        codes = self.mix(joint)  # [R, L, code]
        return [
            (self.down_heads[g](codes[:, i]), self.up_heads[g](codes[:, i]))
            for i, g in enumerate(self.shape_index)
        ]


class HyperNetwork(nn.Module):
    """Maps pooled embeddings [R, D] (and s) to per-row LoRA factors for every target."""

    def __init__(self, config: HyperNetConfig, targets: list[Target]):
        super().__init__()
        self.config, self.targets = config, list(targets)
        generator = PaperGenerator if config.variant == "paper" else CompactGenerator
        self.generator = generator(config, self.targets)
        self.alpha = nn.Parameter(torch.zeros(len(self.targets)))
        # wide LLM triggers (thousands of dims) would make every head's first layer huge
        self.project = (nn.Linear(config.embed_dim, config.input_projection)
                        if config.input_projection else nn.Identity())
        seeded = torch.Generator().manual_seed(config.seed)
        for index, target in enumerate(self.targets):
            start = torch.rand(config.rank, target.in_features, generator=seeded)
            self.register_buffer(f"down0_{index}", start / math.sqrt(config.rank))

    def forward(self, embeddings: torch.Tensor, s: float | torch.Tensor | None = None) -> Factors:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"expected embeddings [rows, {self.config.embed_dim}], got {list(embeddings.shape)}"
            )
        rows = embeddings.shape[0]
        if s is None:
            s = self.config.trajectory_length
        s = torch.as_tensor(s, dtype=torch.float32, device=embeddings.device).expand(rows)
        fraction = s / self.config.trajectory_length
        features = torch.cat(
            [self.project(embeddings.float()), fourier_features(fraction, self.config.fourier_dim)],
            dim=1)
        r, factors = self.config.rank, {}
        for index, (target, (down_raw, up_raw)) in enumerate(
            zip(self.targets, self.generator(features), strict=True)
        ):
            f = fraction[:, None, None]
            alpha = self.config.alpha0 + f * self.alpha[index]
            down0 = getattr(self, f"down0_{index}")
            down = alpha * (down0 + f * down_raw.view(rows, r, target.in_features))
            up = f * up_raw.view(rows, target.delta_features, r)
            factors[target.name] = RowFactors(down, up)
        return factors

    def alpha_at(self, s: float | torch.Tensor) -> torch.Tensor:
        """alpha(s) of every layer, the LoRA scale folded into A: [layers], or [rows, layers]
        for s [rows]."""
        if isinstance(s, torch.Tensor):
            s = s[:, None]
        return self.config.alpha0 + s / self.config.trajectory_length * self.alpha

    def untouched(self, rows: int) -> Factors:
        """The factors at s = 0 for any prompt (alpha0·A0 and zero), without a forward pass."""
        return {
            target.name: RowFactors(
                (self.config.alpha0 * getattr(self, f"down0_{index}")).expand(rows, -1, -1),
                self.alpha.new_zeros(rows, target.delta_features, self.config.rank),
            )
            for index, target in enumerate(self.targets)
        }


def lora_norm(factors: Factors) -> torch.Tensor:
    """Per-row size of the generated LoRA: sqrt(sum over layers of ||up @ down||_F^2).

    Uses the rank x rank Gram matrices, so it never forms a full weight delta.
    """
    total = None
    for f in factors.values():
        down_gram = f.down.float() @ f.down.float().transpose(1, 2)
        up_gram = f.up.float().transpose(1, 2) @ f.up.float()
        squared = (down_gram * up_gram).sum(dim=(1, 2))
        total = squared if total is None else total + squared
    return total.clamp_min(0).sqrt()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
