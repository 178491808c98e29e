"""Training an UnHype network against any `Denoiser` (PAPER.md, "Training").

Removal, trajectory form (the paper's): at a random s, take the gradient g of the ESD loss with
respect to the LoRA factors H(c,s) and teach the network that one step along its trajectory is a
gradient step: MSE(H(c,s+1) - H(c,s), -lambda·g). Direct form (the ablation): minimise the ESD
loss at s = T. Retention, both forms: retain prompts keep the factors of s = 0, i.e. no LoRA.
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .checkpoint import load_state, save_state
from .denoiser import Denoiser
from .fileformat import concepts_digest
from .hypernet import Factors, HyperNetConfig, HyperNetwork, RowFactors, lora_norm
from .lora import row_lora
from .network import NetworkInfo, UnHypeNetwork
from .prompts import Concept, fill
from .targets import Target

OBJECTIVES = ("trajectory", "direct")
CHECKPOINT_KIND = "unhype-training-checkpoint"


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    concepts: list[Concept]
    retain_prompts: list[str]
    templates: list[str]
    objective: str = "trajectory"
    steps: int = 2000
    learning_rate: float = 1e-4
    eta: float = 1.0
    removal_step: float = 1e-4  # lambda: the trajectory's gradient-step size
    retain_weight: float = 1.0
    retain_batch: int = 8
    removal_batch: int = 1
    xt_cache_size: int = 32  # x_t samples kept per concept; 0 re-samples every step
    grad_clip: float = 1.0
    lr_gamma: float = 0.9
    lr_every: int = 500
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    hide_concepts: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.concepts:
            raise ValueError("nothing to erase: give at least one concept")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("every template needs a '{}' where the concept goes")
        if self.steps < 1 or self.learning_rate <= 0:
            raise ValueError("steps must be >= 1 and learning_rate > 0")


@dataclass
class Progress:
    step: int
    steps: int
    losses: dict
    erase_activation: float | None = None
    retain_activation: float | None = None
    seconds: float = 0.0


@dataclass
class TrainResult:
    network: UnHypeNetwork
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    xt_samplings: int = 0
    xt_seconds: float = 0.0


def _detached_leaves(factors: Factors) -> Factors:
    return {
        name: RowFactors(f.down.detach().requires_grad_(True), f.up.detach().requires_grad_(True))
        for name, f in factors.items()
    }


def _factor_mse(left: Factors, right: Factors) -> torch.Tensor:
    total = sum(F.mse_loss(left[n].down, right[n].down) + F.mse_loss(left[n].up, right[n].up)
                for n in left)
    return total / len(left)


class Trainer:
    """Owns the network, optimisers, RNG and x_t cache; `run` resumes wherever `step` is."""

    def __init__(self, denoiser: Denoiser, net_config: HyperNetConfig, targets: list[Target],
                 info: NetworkInfo, config: TrainConfig):
        self.denoiser, self.config, self.info = denoiser, config, info
        self.device = torch.device(denoiser.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.module = HyperNetwork(net_config, targets).to(self.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizers = {
            name: torch.optim.Adam(self.module.parameters(), lr=config.learning_rate)
            for name in ("removal", "retention")
        }
        self.schedulers = {
            name: torch.optim.lr_scheduler.StepLR(opt, config.lr_every, config.lr_gamma)
            for name, opt in self.optimizers.items()
        }
        self.xt_cache: dict[str, list[tuple[torch.Tensor, torch.Tensor, str]]] = {}
        self.step = 0
        self.history: list[dict] = []
        self.xt_samplings, self.xt_seconds = 0, 0.0
        self._embeddings: dict[str, torch.Tensor] = {}

    # -- randomness, all from one generator so a resumed run repeats an uninterrupted one --
    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if missing:
            with torch.no_grad():
                for prompt, row in zip(missing, self.denoiser.embed(missing)):
                    self._embeddings[prompt] = row.float().cpu()
        return torch.stack([self._embeddings[p] for p in prompts]).to(self.device)

    def _sample_xt(self, concept: Concept) -> tuple[torch.Tensor, torch.Tensor, str]:
        """An ESD x_t for the concept, from the cache once it holds `xt_cache_size` samples."""
        pool = self.xt_cache.setdefault(concept.name, [])
        if self.config.xt_cache_size and len(pool) >= self.config.xt_cache_size:
            return pool[self._randint(len(pool))]
        template = self.config.templates[self._randint(len(self.config.templates))]
        prompt = fill(template, concept.name)
        started = time.perf_counter()
        with torch.no_grad():
            x_t, t = self.denoiser.sample_xt(prompt, self.config.removal_batch, self.generator)
        self.xt_seconds += time.perf_counter() - started
        self.xt_samplings += 1
        entry = (x_t.detach(), t.detach(), prompt)
        if self.config.xt_cache_size:
            pool.append(entry)
        return entry

    def _esd_target(self, x_t, t, prompt: str, anchor: str) -> torch.Tensor:
        rows = x_t.shape[0]
        with torch.no_grad():
            anchored = self.denoiser.predict(x_t, t, [anchor] * rows)
            concept = self.denoiser.predict(x_t, t, [prompt] * rows)
        return anchored - self.config.eta * (concept - anchored)

    def _esd_loss(self, factors: Factors, x_t, t, prompt: str, target) -> torch.Tensor:
        rows = x_t.shape[0]
        expanded = {n: RowFactors(f.down.expand(rows, -1, -1), f.up.expand(rows, -1, -1))
                    for n, f in factors.items()}
        with row_lora(self.denoiser.lora_root, self.module.targets, expanded,
                      norm_cap=self.module.config.norm_cap):
            predicted = self.denoiser.predict(x_t, t, [prompt] * rows)
        return F.mse_loss(predicted.float(), target.float())

    def _removal_loss(self) -> tuple[torch.Tensor, float]:
        concept = self.config.concepts[self._randint(len(self.config.concepts))]
        x_t, t, prompt = self._sample_xt(concept)
        x_t, t = x_t.to(self.device), t.to(self.device)
        anchor_template = self.config.templates[self._randint(len(self.config.templates))]
        target = self._esd_target(x_t, t, prompt, fill(anchor_template, concept.anchor))
        embedding = self._embed([prompt])
        T = self.module.config.trajectory_length
        if self.config.objective == "direct":
            loss = self._esd_loss(self.module(embedding, T), x_t, t, prompt, target)
            return loss, float(loss.detach())
        s = self._randint(T)
        now = self.module(embedding, s)
        leaves = _detached_leaves(now)
        esd = self._esd_loss(leaves, x_t, t, prompt, target)
        tensors = [x for f in leaves.values() for x in (f.down, f.up)]
        grads = iter(torch.autograd.grad(esd, tensors))
        descent = {n: RowFactors(-next(grads), -next(grads)) for n in leaves}
        following = self.module(embedding, s + 1)
        # (H(s+1) - H(s)) / lambda against -g: the paper's MSE(H(s+1) - H(s), -lambda g) divided
        # by lambda^2, so Adam's epsilon does not swamp a loss of order lambda^2.
        rate = self.config.removal_step
        moved = {n: RowFactors((following[n].down - now[n].down) / rate,
                               (following[n].up - now[n].up) / rate) for n in now}
        return _factor_mse(moved, descent), float(esd.detach())

    def _retention_loss(self) -> torch.Tensor:
        prompts = self.config.retain_prompts
        if not prompts:
            return torch.zeros((), device=self.device)
        count = min(self.config.retain_batch, len(prompts))
        picks = torch.randperm(len(prompts), generator=self.generator)[:count].tolist()
        embeddings = self._embed([prompts[i] for i in picks])
        T = self.module.config.trajectory_length
        s = T if self.config.objective == "direct" else self._randint(T + 1)
        untouched = self.module.untouched(len(picks))
        return _factor_mse(self.module(embeddings, s), untouched)

    def _optimise(self, name: str, loss: torch.Tensor) -> None:
        if not math.isfinite(float(loss.detach())):
            raise TrainingDivergedError(
                f"the {name} loss became non-finite at step {self.step + 1}; lower the learning "
                "rate or eta. The last checkpoint is kept"
            )
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        optimizer.step()
        self.schedulers[name].step()

    def train_step(self) -> dict:
        """One removal update and one retention update (one joint update for "direct")."""
        removal, esd = self._removal_loss()
        if self.config.objective == "direct":
            retention = self.config.retain_weight * self._retention_loss()
            self._optimise("removal", removal + retention)
        else:
            self._optimise("removal", removal)
            retention = self.config.retain_weight * self._retention_loss()
            self._optimise("retention", retention)
        self.step += 1
        return {"removal": float(removal.detach()), "esd": esd,
                "retention": float(retention.detach())}

    @torch.no_grad()
    def activation(self, prompts: list[str]) -> torch.Tensor:
        return lora_norm(self.module(self._embed(prompts))).cpu()

    def _probe_prompts(self) -> tuple[list[str], list[str]]:
        templates = self.config.templates[:4]
        erase = [fill(t, c.name) for c in self.config.concepts for t in templates]
        return erase, self.config.retain_prompts[:16]

    # -- checkpoints --
    def state(self) -> dict:
        return {
            "step": self.step,
            "module": self.module.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "generator": self.generator.get_state(),
            "xt_cache": {k: [list(e) for e in v] for k, v in self.xt_cache.items()},
            "history": self.history,
            "xt": [self.xt_samplings, self.xt_seconds],
            "config": _config_record(self.config),
        }

    def save_checkpoint(self, path: str) -> None:
        save_state(path, self.state(), CHECKPOINT_KIND)

    def load_checkpoint(self, path: str) -> None:
        state = load_state(path, CHECKPOINT_KIND)
        if state["config"] != _config_record(self.config):
            raise ValueError(
                f"{path} was made with other training settings; resume with the same settings"
            )
        self.module.load_state_dict(state["module"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        self.generator.set_state(state["generator"])
        self.xt_cache = {k: [tuple(e) for e in v] for k, v in state["xt_cache"].items()}
        self.step, self.history = int(state["step"]), list(state["history"])
        self.xt_samplings, self.xt_seconds = int(state["xt"][0]), float(state["xt"][1])

    # -- the loop --
    def run(self, checkpoint_path: str | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> TrainResult:
        """Train to `config.steps`; any interruption (cancel, error) first saves a checkpoint.

        A NaN/inf loss raises `TrainingDivergedError` and keeps the last good checkpoint.
        """
        started = time.perf_counter()
        self.module.train()
        erase_probe, retain_probe = self._probe_prompts()
        try:
            while self.step < self.config.steps:
                losses = self.train_step()
                record = {"step": self.step, **losses}
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    record["erase_activation"] = float(self.activation(erase_probe).mean())
                    record["retain_activation"] = (
                        float(self.activation(retain_probe).mean()) if retain_probe else 0.0
                    )
                self.history.append(record)
                if checkpoint_path and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
                if on_progress:
                    on_progress(Progress(
                        self.step, self.config.steps, losses, record.get("erase_activation"),
                        record.get("retain_activation"), time.perf_counter() - started))
        except TrainingDivergedError:
            raise
        except BaseException:
            if checkpoint_path:
                self.save_checkpoint(checkpoint_path)
            raise
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        self.module.eval()
        return TrainResult(self.network(), self.history, time.perf_counter() - started,
                           self.xt_samplings, self.xt_seconds)

    def network(self) -> UnHypeNetwork:
        """The trained network with its training summary and activation reference."""
        self.module.eval()
        templates = self.config.templates[:8]
        reference = float(self.activation(
            [fill(t, c.name) for c in self.config.concepts for t in templates]).max())
        concepts = [c.name for c in self.config.concepts]
        training = {
            "steps": self.step,
            "objective": self.config.objective,
            "eta": self.config.eta,
            "learning_rate": self.config.learning_rate,
            "retain_count": len(self.config.retain_prompts),
            "seed": self.config.seed,
            "anchors": {} if self.config.hide_concepts
            else {c.name: c.anchor for c in self.config.concepts},
            "concept_count": len(concepts),
            "concepts_sha256": concepts_digest(concepts),
            **({} if self.config.hide_concepts else {"concepts": concepts}),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        info = NetworkInfo(**{**asdict(self.info), "training": training,
                              "activation_reference": reference or None})
        module = HyperNetwork(self.module.config, self.module.targets)
        module.load_state_dict(self.module.state_dict())
        return UnHypeNetwork(self.module.config, self.module.targets, info,
                             module.requires_grad_(False).eval())


def _config_record(config: TrainConfig) -> dict:
    """The settings a resume must share with the run it continues.

    Steps may grow, and how often to log or checkpoint does not change the result.
    """
    record = asdict(config)
    for free in ("steps", "log_every", "checkpoint_every"):
        record.pop(free)
    record["concepts"] = [[c.name, c.anchor] for c in config.concepts]
    return record
