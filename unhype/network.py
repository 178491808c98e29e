"""An UnHype network as users handle it: the hypernetwork, what it is for, how it was made."""

from dataclasses import dataclass, field

import torch

from .families import FAMILIES, family
from .gate import triggers
from .hypernet import Factors, HyperNetConfig, HyperNetwork, lora_norm
from .targets import Target


@dataclass
class NetworkInfo:
    """Everything about a network that is not a tensor; saved as file metadata."""

    base_arch: str  # a key of unhype/families.py FAMILIES
    target_preset: str
    #: what the network reads; None: its family's pooled embedding
    embedding_source: str | None = None
    title: str = "UnHype network"
    author: str = "anonymous"  # ModelSpec author; "" (none given) becomes "anonymous"
    description: str = ""
    training: dict = field(default_factory=dict)
    #: LoRA norm of the strongest erase prompt seen in training: activation 1.0 in reports.
    activation_reference: float | None = None
    #: LoRA norm at or under which a prompt gets no LoRA at all (unhype/gate.py); None: no gate.
    gate_threshold: float | None = None

    def __post_init__(self):
        if self.base_arch not in FAMILIES:
            raise ValueError(
                f"base architecture {self.base_arch!r} is not one of {sorted(FAMILIES)}"
            )
        self.author = self.author.strip() or "anonymous"
        if self.embedding_source is None:
            self.embedding_source = family(self.base_arch).embedding_source


class FamilyMismatchError(ValueError):
    """A network used on a model of another family than the one it was made for."""


def check_family(info: NetworkInfo, model_family: str) -> None:
    """A network runs only on the family it was made for: another family's layers, text encoder
    or trigger width differ even where some layer names match (SD1.x and SD2.x share theirs)."""
    if info.base_arch == model_family:
        return
    made, model = family(info.base_arch), family(model_family)
    raise FamilyMismatchError(
        f"the UnHype network '{info.title}' was made for {made.label} ({made.name}; trigger: "
        f"{info.embedding_source}), and this model is {model.label} ({model.name}; text "
        f"encoder {model.pooled_encoder}): use a network made for {model.label}, or load a "
        f"{made.label} checkpoint.")


class UnHypeNetwork:
    """Hypernetwork + config + targets + info; produces per-prompt LoRA factors."""

    def __init__(self, config: HyperNetConfig, targets: list[Target], info: NetworkInfo,
                 module: HyperNetwork | None = None):
        self.config, self.targets, self.info = config, list(targets), info
        self.module = module if module is not None else HyperNetwork(config, self.targets)

    @torch.no_grad()
    def factors(self, embeddings: torch.Tensor, s: float | None = None) -> Factors:
        """Inference factors (s = T unless given), float32, on the network's device."""
        device = next(self.module.parameters()).device
        return self.module(embeddings.to(device, torch.float32), s)

    @torch.no_grad()
    def readout(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(activation, triggered) per prompt from one pass: how strongly it triggers the
        network, 0..1 against the training reference (the raw LoRA norm without one), and
        whether it passes the gate (unhype/gate.py), i.e. gets a LoRA at all."""
        norms = lora_norm(self.factors(embeddings)).cpu()
        triggered = triggers(norms, self.info.gate_threshold)
        if not self.info.activation_reference:
            return norms, triggered
        return (norms / self.info.activation_reference).clamp(0.0, 1.0), triggered

    def activation(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The activation part of `readout`."""
        return self.readout(embeddings)[0]

    def to(self, device) -> "UnHypeNetwork":
        self.module.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"UnHypeNetwork({self.info.title!r}, {self.info.base_arch}, "
            f"{len(self.targets)} targets, rank {self.config.rank}, {self.config.variant})"
        )
