"""The loop that trains an UnHype network against any `Denoiser`: draws, model calls,
optimiser steps, checkpoints and resume. The losses it minimises are the paper's, in
unhype/objectives.py; the checks that stop a diverged run are in unhype/divergence.py.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from .checkpoint import load_state, save_state
from .choices import OBJECTIVES
from .denoiser import Denoiser
from .divergence import DivergenceGuard, TrainingDivergedError
from .fileformat import concepts_digest
from .gate import choose_threshold
from .hypernet import Factors, HyperNetConfig, HyperNetwork, RowFactors, lora_norm
from .lora import row_lora
from .network import NetworkInfo, UnHypeNetwork
from .objectives import esd_loss, esd_target, retention_term, trajectory_term
from .prompts import Concept, fill
from .separation import Separation, SeparationCheck, split_templates
from .targets import Target
from .trigger import read_trigger

CHECKPOINT_KIND = "unhype-training-checkpoint"


@dataclass
class TrainConfig:
    """What one run does. The values a user can set, and their defaults (the authors' configs,
    PAPER.md), are declared once in unhype/settings.py, which builds this; the fields with a
    default here are the trainer's own, not settings."""

    concepts: list[Concept]
    retain_prompts: list[str]
    templates: list[str]
    objective: str
    steps: int
    learning_rate: float  # removal Adam
    eta: float
    removal_step: float  # lambda: the trajectory's gradient-step size
    removal_weight: float  # w_rm, on the trajectory term
    retain_weight: float  # w_rt
    retain_batch: int
    removal_draws: int  # (concept, x_t, s) samples per step, gradients averaged; split across
    #                     the processes of a distributed run
    xt_cache_size: int  # x_t samples kept per concept; 0 re-samples every step
    lr_gamma: float
    lr_every: int
    seed: int
    checkpoint_every: int
    hide_concepts: bool
    retain_learning_rate: float | None = None  # retention Adam; None: learning_rate
    removal_batch: int = 1
    draws_per_call: int = 0  # removal draws per model call (0: all of a step's at once)
    grad_clip: float = 0.0  # 0: none, as the authors
    log_every: int = 10

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.concepts:
            raise ValueError("nothing to erase: give at least one concept")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("every template needs a '{}' where the concept goes")
        if self.steps < 1 or self.learning_rate <= 0:
            raise ValueError("steps must be >= 1 and learning_rate > 0")
        if self.removal_draws < 1:
            raise ValueError(f"removal_draws must be >= 1, got {self.removal_draws}")
        if self.retain_learning_rate is not None and self.retain_learning_rate <= 0:
            raise ValueError("retain_learning_rate must be > 0 (or None: learning_rate)")


@dataclass
class Progress:
    step: int
    steps: int
    losses: dict
    erase_activation: float | None = None
    retain_activation: float | None = None
    seconds: float = 0.0
    separation: Separation | None = None  # at checkpoints and at the end


@dataclass
class TrainResult:
    network: UnHypeNetwork
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    xt_samplings: int = 0
    xt_seconds: float = 0.0
    separation: Separation | None = None


class Trainer:
    """Owns the network, optimisers, RNG and x_t cache; `run` resumes wherever `step` is."""

    def __init__(self, denoiser: Denoiser, net_config: HyperNetConfig, targets: list[Target],
                 info: NetworkInfo, config: TrainConfig, group=None):
        """`group`: a torch.distributed process group to train data-parallel in (every process
        builds the same Trainer; each computes its share of the removal draws and retain rows,
        gradients are summed across processes; process 0 writes the checkpoints)."""
        self.denoiser, self.config, self.info = denoiser, config, info
        self.group = group
        self.rank = dist.get_rank(group) if group is not None else 0
        self.world = dist.get_world_size(group) if group is not None else 1
        if config.removal_draws % self.world:
            raise ValueError(f"removal_draws ({config.removal_draws}) must be a multiple of the "
                             f"number of processes ({self.world})")
        self.device = torch.device(denoiser.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.module = HyperNetwork(net_config, targets).to(self.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        rates = {"removal": config.learning_rate,
                 "retention": config.retain_learning_rate or config.learning_rate}
        self.optimizers = {name: torch.optim.Adam(self.module.parameters(), lr=rate)
                           for name, rate in rates.items()}
        self.schedulers = {
            name: torch.optim.lr_scheduler.StepLR(opt, config.lr_every, config.lr_gamma)
            for name, opt in self.optimizers.items()
        }
        # templates held out of training for the separation check (unhype/separation.py)
        self.templates, _ = split_templates(config.templates)
        self._separation_check: SeparationCheck | None = None
        self._separation: Separation | None = None
        self.xt_cache: dict[str, list[tuple[torch.Tensor, torch.Tensor, str]]] = {}
        self.step = 0
        self.history: list[dict] = []
        self.xt_samplings, self.xt_seconds = 0, 0.0
        self.checkpoint_step: int | None = None
        self._embeddings: dict[str, torch.Tensor] = {}
        self.guard = DivergenceGuard(config, self._untouched_scale)

    # -- randomness, all from one generator so a resumed run repeats an uninterrupted one --
    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if missing:
            with torch.no_grad():
                config = self.module.config
                rows = read_trigger(self.denoiser, missing, config.trigger, config.trigger_skip)
                for prompt, row in zip(missing, rows):
                    self._embeddings[prompt] = row.float().cpu()
        return torch.stack([self._embeddings[p] for p in prompts]).to(self.device)

    def _esd_target(self, x_t, t, prompt: str | list[str], anchor: str | list[str]):
        """The frozen model's ESD target; `prompt` and `anchor` for every row, or one per row."""
        rows = x_t.shape[0]
        with torch.no_grad():
            anchored = self.denoiser.predict(x_t, t, _per_row(anchor, rows))
            concept = self.denoiser.predict(x_t, t, _per_row(prompt, rows))
        return esd_target(anchored, concept, self.config.eta)

    def _esd_loss(self, factors: Factors, x_t, t, prompt: str | list[str], target):
        """MSE of the prediction with the LoRA against `target`; each factor row serves an equal
        run of x_t's rows (one removal draw's `removal_batch`)."""
        rows = x_t.shape[0]
        draws = next(iter(factors.values())).down.shape[0]
        expanded = {n: RowFactors(_spread(f.down, rows // draws), _spread(f.up, rows // draws))
                    for n, f in factors.items()}
        with row_lora(self.denoiser.lora_root, self.module.targets, expanded,
                      norm_cap=self.module.config.norm_cap):
            predicted = self.denoiser.predict(x_t, t, _per_row(prompt, rows))
        return esd_loss(predicted, target)

    def _draw_removals(self) -> list[tuple[int, torch.Tensor, torch.Tensor, str, str]]:
        """The random part of a step's removal draws: (concept index, x_t, t, prompt, anchor)
        each. A concept's x_t come from its cache once that holds `xt_cache_size`; until then
        new ones are sampled, for all of the step's draws in one call (the top cost of training
        many concepts, each with its own cache to fill). The cache keeps templates, not prompts,
        so a checkpoint never spells out a concept.

        Every process draws every sample, so their generators stay in step."""
        size, picks = self.config.xt_cache_size, []
        for _ in range(self.config.removal_draws):
            index = self._randint(len(self.config.concepts))
            pool = self.xt_cache.setdefault(str(index), [])
            if size and len(pool) >= size:
                picks.append((index, pool[self._randint(len(pool))]))
            else:
                picks.append((index, self.templates[self._randint(len(self.templates))]))
        new = [(index, pick) for index, pick in picks if isinstance(pick, str)]
        if new:
            started = time.perf_counter()
            with torch.no_grad():
                x_t, t = self.denoiser.sample_xt(
                    [fill(template, self.config.concepts[index].name) for index, template in new],
                    self.config.removal_batch, self.generator)
            self.xt_seconds += time.perf_counter() - started
            self.xt_samplings += len(new)
            rows = self.config.removal_batch
            sampled = iter((x_t[k * rows:(k + 1) * rows].detach(),
                            t[k * rows:(k + 1) * rows].detach(), template)
                           for k, (_, template) in enumerate(new))
            for number, (index, pick) in enumerate(picks):
                if isinstance(pick, str):
                    picks[number] = (index, next(sampled))
                    pool = self.xt_cache[str(index)]
                    if size and len(pool) < size:
                        pool.append(picks[number][1])
        draws = []
        for index, (x_t, t, template) in picks:
            concept = self.config.concepts[index]
            # the anchor in the same template keeps the rest of the prompt ("a photo of X at
            # the beach" -> "a photo of a person at the beach")
            draws.append((index, x_t.to(self.device), t.to(self.device),
                          fill(template, concept.name), fill(template, concept.anchor)))
        return draws

    def _removal_batch(self, mine: list) -> tuple:
        """This process's removal draws as one batch, so their ESD targets, forward and backward
        are one model call each however many draws a step takes: (embeddings [K, D], x_t, t,
        prompt per row, ESD target, s [K])."""
        rows = [draw[1].shape[0] for draw, _ in mine]
        prompts = [p for (draw, _), n in zip(mine, rows) for p in [draw[3]] * n]
        anchors = [a for (draw, _), n in zip(mine, rows) for a in [draw[4]] * n]
        x_t = torch.cat([draw[1] for draw, _ in mine])
        t = torch.cat([draw[2] for draw, _ in mine])
        embeddings = self._embed([draw[3] for draw, _ in mine])
        s = torch.tensor([s for _, s in mine], dtype=torch.float32, device=self.device)
        return embeddings, x_t, t, prompts, self._esd_target(x_t, t, prompts, anchors), s

    def _draw_retention(self) -> tuple[list[str], torch.Tensor, int] | None:
        """(this process's retain prompts, their s, the batch size), or None without any."""
        prompts = self.config.retain_prompts
        if not prompts:
            return None
        count = min(self.config.retain_batch, len(prompts))
        picks = torch.randperm(len(prompts), generator=self.generator)[:count].tolist()
        T = self.module.config.trajectory_length
        if self.config.objective == "direct":
            s = torch.full((count,), T)
        else:
            s = torch.randint(T + 1, (count,), generator=self.generator)
        mine = slice(self.rank, None, self.world)
        return [prompts[i] for i in picks][mine], s[mine], count

    def _retention_loss(self, drawn) -> torch.Tensor:
        """This process's share of w_rt·mean((H(c_r,s) - H(c_r,0))^2) over the whole batch."""
        if drawn is None or not drawn[0]:
            return torch.zeros((), device=self.device)
        prompts, s, count = drawn
        factors = self.module(self._embed(prompts), s)
        share = self.config.retain_weight * retention_term(
            factors, self.module.untouched(len(prompts)))
        return share * (len(prompts) / count)

    def _trajectory_loss(self, embedding: torch.Tensor, s: int | torch.Tensor,
                         now: Factors) -> torch.Tensor:
        """w_rm times the trajectory term (unhype/objectives.py) at s (one, or one per row);
        `now` is H(c,s) with the ESD gradient in its factors' .grad."""
        following = self.module(embedding, s + 1)
        alpha_now = self.module.alpha_at(s)
        alpha_step = self.module.alpha_at(s + 1) - alpha_now
        return self.config.removal_weight * trajectory_term(
            now, following, alpha_now, alpha_step, self.config.removal_step)

    def _guard(self, name: str, value: float) -> float:
        return self.guard.loss(name, value, self.step)

    def _untouched_scale(self) -> float:
        untouched = list(self.module.untouched(1).values())  # alpha0·A0 and a zero B
        return sum(float(f.down.pow(2).sum()) for f in untouched) / sum(
            f.down.numel() + f.up.numel() for f in untouched)

    def _total(self, values: list[float]) -> list[float]:
        """Sums of per-process values over all processes (the values themselves alone)."""
        if self.world == 1:
            return values
        summed = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(summed, group=self.group)
        return summed.tolist()

    def _update(self, name: str, draws: int = 1) -> None:
        """Sum the gradients over processes, average over `draws`, one optimiser step."""
        if self.world > 1:
            for parameter in self.module.parameters():
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.all_reduce(parameter.grad, group=self.group)
        if draws > 1:
            for parameter in self.module.parameters():
                if parameter.grad is not None:
                    parameter.grad /= draws
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        self.optimizers[name].step()
        self.schedulers[name].step()

    def train_step(self) -> dict:
        """One removal update and one retention update (one joint update for "direct").

        Every model call (x_t, ESD targets, embeddings, the ESD forward) comes before the first
        parameter update, so an interrupt raised inside a model forward leaves the parameters of
        the last completed step; `run` rewinds the generator and the x_t cache. Losses are
        checked on their totals over processes, so every process stops alike.
        """
        draws = self._draw_removals()
        retain = self._draw_retention()
        T = self.module.config.trajectory_length
        trajectory = self.config.objective == "trajectory"
        positions = [self._randint(T) if trajectory else T for _ in draws]
        mine = [(draw, s) for number, (draw, s) in enumerate(zip(draws, positions))
                if number % self.world == self.rank]
        # the draws in calls of at most `draws_per_call` (their activations held at once)
        size = self.config.draws_per_call or len(mine)
        chunks = [mine[k:k + size] for k in range(0, len(mine), size)]
        batches = [self._removal_batch(chunk) for chunk in chunks]
        self.optimizers["removal"].zero_grad(set_to_none=True)
        count = len(draws)
        zero = torch.zeros((), device=self.device)
        if not trajectory:
            # every draw's mean loss summed (each draw has the same number of rows)
            esd = sum((len(chunk) * self._esd_loss(self.module(e, T), x_t, t, p, target)
                       for chunk, (e, x_t, t, p, target, _) in zip(chunks, batches)), zero)
            retention = self._retention_loss(retain)
            esd_total, retention_total = self._total([float(esd.detach()),
                                                      float(retention.detach())])
            esd_value = self._guard("ESD", esd_total / count)
            retention_value = self._guard("retention", retention_total)
            loss = esd + count * retention
            if loss.requires_grad:
                loss.backward()
            self._update("removal", count)
            return {"removal": esd_value, "esd": esd_value, "retention": retention_value}
        esd_sum = term_sum = 0.0
        for chunk, (embeddings, x_t, t, prompts, target, s) in zip(chunks, batches):
            now = self.module(embeddings, s)
            for f in now.values():
                f.down.retain_grad()
                f.up.retain_grad()
            esd = len(chunk) * self._esd_loss(now, x_t, t, prompts, target)
            esd.backward(retain_graph=True)
            term = len(chunk) * self._trajectory_loss(embeddings, s, now)
            term.backward()
            esd_sum, term_sum = esd_sum + float(esd.detach()), term_sum + float(term.detach())
        esd_total, term_total = self._total([esd_sum, term_sum])
        esd_value = self._guard("ESD", esd_total / count)
        trajectory_value = self._guard("trajectory", term_total / count)
        self._update("removal", count)
        self.optimizers["retention"].zero_grad(set_to_none=True)
        retention = self._retention_loss(retain)
        retention_value = self._guard("retention", self._total([float(retention.detach())])[0])
        if retention.requires_grad:
            retention.backward()
        self._update("retention")
        return {"removal": trajectory_value, "esd": esd_value, "retention": retention_value}

    @torch.no_grad()
    def activation(self, prompts: list[str]) -> torch.Tensor:
        return lora_norm(self.module(self._embed(prompts))).cpu()

    def separation(self) -> Separation:
        """The judge-free separation check at the current step (its probes drawn once)."""
        if self._separation_check is None:
            self._separation_check = SeparationCheck(self, self.config.seed)
        if self._separation is None or self._separation.step != self.step:
            self._separation = self._separation_check(self.step)
        return self._separation

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
            "peaks": self.guard.peaks,
            "config": _config_record(self.config),
        }

    def save_checkpoint(self, path: str) -> None:
        """Process 0 writes; every process holds the same state."""
        if self.rank == 0:
            save_state(path, self.state(), CHECKPOINT_KIND)
        self.checkpoint_step = self.step

    def _rewind_point(self) -> tuple:
        return (self.generator.get_state(), {k: len(v) for k, v in self.xt_cache.items()},
                self.xt_samplings, self.xt_seconds)

    def _rewind(self, point: tuple) -> None:
        """Back to the state before an interrupted step: generator, x_t cache, counters."""
        generator, lengths, self.xt_samplings, self.xt_seconds = point
        self.generator.set_state(generator)
        self.xt_cache = {k: v[:lengths[k]] for k, v in self.xt_cache.items() if k in lengths}

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
        self.guard.peaks = dict(state["peaks"])
        self.checkpoint_step = self.step

    # -- the loop --
    def run(self, checkpoint_path: str | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> TrainResult:
        """Train to `config.steps`; any interruption (cancel, error) first saves a checkpoint.

        Divergence raises `TrainingDivergedError` naming the cause and the last good checkpoint,
        which it leaves as it was.
        """
        started = time.perf_counter()
        self.module.train()
        erase_probe, retain_probe = self._probe_prompts()
        try:
            while self.step < self.config.steps:
                point = self._rewind_point()
                try:
                    losses = self.train_step()
                except BaseException:
                    self._rewind(point)
                    raise
                self.step += 1
                record = {"step": self.step, **losses}
                self.history.append(record)
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    record["erase_activation"] = float(self.activation(erase_probe).mean())
                    record["retain_activation"] = (
                        float(self.activation(retain_probe).mean()) if retain_probe else 0.0
                    )
                    self.guard.activation(record["erase_activation"],
                                          record["retain_activation"], self.step)
                separation = None
                if self.step % self.config.checkpoint_every == 0 \
                        or self.step == self.config.steps:
                    separation = self.separation()
                    record["separation"] = separation.to_dict()
                if checkpoint_path and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint(checkpoint_path)
                if on_progress:
                    on_progress(Progress(
                        self.step, self.config.steps, losses, record.get("erase_activation"),
                        record.get("retain_activation"), time.perf_counter() - started,
                        separation))
        except TrainingDivergedError as error:
            kept = (f"the last good checkpoint is {checkpoint_path} (step {self.checkpoint_step})"
                    if checkpoint_path and self.checkpoint_step is not None
                    else "no checkpoint was written")
            raise TrainingDivergedError(
                f"training diverged: {error}. Lower the learning rate (now "
                f"{self.config.learning_rate:g}) or eta (now {self.config.eta:g}). No network was "
                f"written; {kept}") from None
        except BaseException:
            if checkpoint_path:
                self.save_checkpoint(checkpoint_path)
            raise
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        self.module.eval()
        return TrainResult(self.network(), self.history, time.perf_counter() - started,
                           self.xt_samplings, self.xt_seconds, self.separation())

    def network(self) -> UnHypeNetwork:
        """The trained network with its training summary, activation reference and gate."""
        self.module.eval()
        templates = self.config.templates[:8]
        erase = self.activation([fill(t, c.name) for c in self.config.concepts for t in templates])
        reference = float(erase.max())
        retain = self.config.retain_prompts
        gate = choose_threshold(erase, self.activation(retain) if retain else torch.zeros(0))
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
            "separation": self.separation().to_dict(),
            **({} if self.config.hide_concepts else {"concepts": concepts}),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        info = NetworkInfo(**{**asdict(self.info), "training": training,
                              "activation_reference": reference or None,
                              "gate_threshold": gate})
        module = HyperNetwork(self.module.config, self.module.targets)
        module.load_state_dict(self.module.state_dict())
        return UnHypeNetwork(self.module.config, self.module.targets, info,
                             module.requires_grad_(False).eval())


def _per_row(prompt: str | list[str], rows: int) -> list[str]:
    return [prompt] * rows if isinstance(prompt, str) else prompt


def _spread(factor: torch.Tensor, rows: int) -> torch.Tensor:
    """[K, ...] -> [K * rows, ...]: each factor row repeated for `rows` consecutive rows."""
    return factor[:, None].expand(-1, rows, *factor.shape[1:]).reshape(-1, *factor.shape[1:])


def _config_record(config: TrainConfig) -> dict:
    """The settings a resume must share with the run it continues.

    Steps may grow; how often to log or checkpoint does not change the result, nor (beyond
    float rounding) how many draws share a model call.
    """
    record = asdict(config)
    for free in ("steps", "log_every", "checkpoint_every", "draws_per_call"):
        record.pop(free)
    pairs = [[c.name, c.anchor] for c in config.concepts]
    record["concepts"] = (concepts_digest([f"{n} -> {a}" for n, a in pairs])
                          if config.hide_concepts else pairs)
    return record
