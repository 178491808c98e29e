"""Pooled embeddings -> the rows that get a LoRA and their stacked factors, each distinct
embedding through the hypernetwork once: the one factor provider of Apply Dynamic LoRA and the
proving ground, and so the one place the gate (unhype/gate.py) decides: a row whose prompt does
not trigger the network is left out, so it gets no hook and exactly the base model's output.

Per-embedding factors are kept on the CPU in an LRU bounded in bytes, so a prompt costs one
hypernetwork pass across sampling runs; the stacked factors of the last few batch layouts are
kept on the sampling device until `release` (the end of a run). The hypernetwork runs wherever
its module is; this class never copies or moves it. Thread-safe: one lock guards all state.
"""

import threading
from collections import OrderedDict

import torch

from .gate import triggers
from .hypernet import Factors, RowFactors, lora_norm


def _nbytes(entry: Factors) -> int:
    return sum(f.down.nbytes + f.up.nbytes for f in entry.values())


class FactorCache:
    def __init__(self, network, cache_bytes: int = 64 * 2**20, device_layouts: int = 4):
        self.network = network
        self.cache_bytes, self.device_layouts = int(cache_bytes), int(device_layouts)
        self.hypernet_calls = 0  # number of hypernetwork forwards, for tests and benchmarks
        self._lock = threading.Lock()
        self._factors: OrderedDict = OrderedDict()  # embedding bytes -> {name: RowFactors [1,..]}
        self._factor_bytes = 0
        self._norms: dict = {}  # embedding bytes -> LoRA norm, for every embedding in _factors
        self._on_device: OrderedDict = OrderedDict()  # (keys, device, dtype) -> (kept, factors)

    def release(self, *_) -> None:
        """Drop the factors kept on the sampling device."""
        with self._lock:
            self._on_device.clear()

    def _generate(self, rows: torch.Tensor) -> tuple[Factors, torch.Tensor]:
        """Factors and LoRA norms for embeddings [R, D] from the shared module, on the device it
        is on (returned on the CPU)."""
        module = self.network.module
        device = next(module.parameters()).device
        with torch.no_grad():
            computed = module(rows.to(device))
            norms = lora_norm(computed).cpu()
        self.hypernet_calls += 1
        return {name: RowFactors(f.down.cpu(), f.up.cpu()) for name, f in computed.items()}, norms

    def select(self, embeddings: torch.Tensor, device: torch.device,
               dtype) -> tuple[torch.Tensor, Factors | None]:
        """For pooled embeddings [R, D]: the indices (into the R rows, on the CPU) of those that
        pass the network's gate, and their factors stacked on `device` in `dtype` (None when no
        row passes: then no LoRA is needed at all)."""
        host = embeddings.detach().to("cpu", torch.float32).contiguous()
        keys = tuple(row.numpy().tobytes() for row in host)
        layout = (keys, str(device), dtype)
        with self._lock:
            if layout in self._on_device:
                self._on_device.move_to_end(layout)
                return self._on_device[layout]
            unique = list(dict.fromkeys(k for k in keys if k not in self._factors))
            if unique:
                computed, norms = self._generate(host[[keys.index(k) for k in unique]])
                for j, key in enumerate(unique):
                    entry = {name: RowFactors(f.down[j:j + 1].clone(), f.up[j:j + 1].clone())
                             for name, f in computed.items()}
                    self._factors[key], self._norms[key] = entry, norms[j]
                    self._factor_bytes += _nbytes(entry)
            for key in keys:
                self._factors.move_to_end(key)
            needed = len(set(keys))
            while self._factor_bytes > self.cache_bytes and len(self._factors) > needed:
                key, dropped = self._factors.popitem(last=False)
                del self._norms[key]
                self._factor_bytes -= _nbytes(dropped)
            norms = torch.stack([self._norms[k] for k in keys])
            kept = triggers(norms, self.network.info.gate_threshold).nonzero().flatten()
            parts = [self._factors[keys[i]] for i in kept.tolist()]
            stacked = {
                name: RowFactors(
                    torch.cat([p[name].down for p in parts]).to(device, dtype),
                    torch.cat([p[name].up for p in parts]).to(device, dtype),
                )
                for name in parts[0]
            } if parts else None
            self._on_device[layout] = (kept, stacked)
            while len(self._on_device) > self.device_layouts:
                self._on_device.popitem(last=False)
            return kept, stacked
