"""Nested training state (module, optimisers, schedulers, RNG, caches) <-> one .safetensors file.

Tensors go in as tensors; everything else (numbers, strings, lists, dict structure) goes into the
metadata as JSON with placeholders, so a checkpoint is restored exactly and nothing is unpickled.
"""

import json

import torch
from safetensors import safe_open

from .files import save_atomically

_TENSOR = "__tensor__"


def _flatten(value, prefix: str, tensors: dict):
    if isinstance(value, torch.Tensor):
        key = prefix or "root"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise TypeError(f"checkpoint keys must be str or int at {prefix!r}")
        return {
            "__dict__": [
                [k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)]
                for k, v in value.items()
            ]
        }
    if isinstance(value, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {prefix!r} in a checkpoint")


def _unflatten(skeleton, tensors: dict):
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            return tensors[skeleton[_TENSOR]]
        if "__dict__" in skeleton:
            return {k: _unflatten(v, tensors) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [_unflatten(v, tensors) for v in skeleton["__list__"]]
    return skeleton


def save_state(path: str, state: dict, kind: str) -> None:
    """Atomic write (unhype/files.py): a crash mid-save keeps the previous checkpoint intact."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    save_atomically(path, tensors, {"format": kind, "state": json.dumps(skeleton)})


def load_state(path: str, kind: str) -> dict:
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != kind:
                raise ValueError(f"{path} is not a {kind} file")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: unreadable checkpoint ({error})") from None
    return _unflatten(json.loads(metadata["state"]), tensors)
