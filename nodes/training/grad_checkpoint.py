"""Gradient checkpointing through a frozen diffusion model, for training with forward hooks.

Backpropagating through the diffusion model keeps every activation of its forward until the
backward. Checkpointing keeps only each block's inputs and recomputes the block during the
backward: one more forward through the model buys most of the activation memory (ComfyUI's own
trainer does the same, comfy_extras/nodes_train.py). The recomputation runs after the caller's
`with` blocks have ended, so two things differ from a plain torch.utils.checkpoint per block:
- the forward hooks that were on the block's modules (UnHype's row LoRA) are put back for the
  recomputation, which therefore adds the same LoRA as the forward did;
- the recomputation starts from copies of the block's arguments taken when the block ran:
  blocks write to their input tensors (Flux's `img += ...`), and the model updates dicts such as
  ComfyUI's transformer_options ("block", "transformer_index") as it goes. The copies are the
  price: about one hidden state per block, where the activations saved are many.
Pure PyTorch; nothing here imports ComfyUI.
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Classes checkpointed one by one: ComfyUI's UNet (SD1.x/SD2/SDXL), Flux.1 and Flux.2 blocks,
#: Qwen-Image's, Wan's and Lumina2's (Z-Image: its refiners and main layers alike), and the
#: proving ground's UNet, which uses the same names as ComfyUI's.
BLOCKS = ("ResBlock", "SpatialTransformer", "DoubleStreamBlock", "SingleStreamBlock",
          "QwenImageTransformerBlock", "WanAttentionBlock", "JointTransformerBlock")


def checkpoint_blocks(root: nn.Module) -> list[nn.Module]:
    """The outermost modules under `root` whose class is one of BLOCKS."""
    chosen, prefixes = [], []
    for name, module in root.named_modules():
        if type(module).__name__ in BLOCKS and not any(name.startswith(p) for p in prefixes):
            chosen.append(module)
            prefixes.append(name + ".")
    return chosen


def _snapshot(value, snapshots: dict):
    """What the recomputation starts from: a copy of a tensor as it is now (blocks may change
    their inputs in place: Flux's `img += ...`), one per tensor and version; a dict's copy."""
    if isinstance(value, torch.Tensor):
        key = (id(value), value._version)
        if key not in snapshots:  # the original stays referenced, so its id is not reused
            copy = value.detach().clone().requires_grad_(value.requires_grad)
            snapshots[key] = (value, copy)
        return snapshots[key][1]
    return dict(value) if isinstance(value, dict) else value


def _fresh(value):
    """A copy to recompute with (several blocks may share one snapshot, and blocks write)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    return dict(value) if isinstance(value, dict) else value


@contextmanager
def _attached(hooks: list) -> Iterator[None]:
    """The (module, hook, with_kwargs) forward hooks that are not on their module now, on it."""
    handles = []
    try:
        for module, hook, with_kwargs in hooks:
            if not any(h is hook for h in module._forward_hooks.values()):
                handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _checkpointing(block: nn.Module, forward, around_recompute, snapshots: dict):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        # hooks inside the block (the block's own run outside the checkpoint, around `run`)
        hooks = [(m, hook, bool(m._forward_hooks_with_kwargs.get(key)))
                 for m in block.modules() if m is not block
                 for key, hook in m._forward_hooks.items()]
        saved_args = [_snapshot(a, snapshots) for a in args]
        saved_kwargs = {k: _snapshot(v, snapshots) for k, v in kwargs.items()}
        recomputing = []

        def body():
            if not recomputing:  # the forward itself: the caller's own arguments and hooks
                recomputing.append(True)
                return forward(*args, **kwargs)
            with _attached(hooks), around_recompute():
                return forward(*[_fresh(a) for a in saved_args],
                               **{k: _fresh(v) for k, v in saved_kwargs.items()})

        return checkpoint(body, use_reentrant=False)

    return run


@contextmanager
def gradient_checkpointing(root: nn.Module, around_recompute=nullcontext) -> Iterator[int]:
    """Within the block, every checkpoint block under `root` is checkpointed whenever autograd
    records (under no_grad it runs as usual); yields how many blocks that is. The blocks'
    `forward` is restored on exit, also when the body raises. `around_recompute()` is a context
    entered around each recomputation (global settings the forward ran under)."""
    blocks = checkpoint_blocks(root)
    missing = object()
    originals = [(block, block.__dict__.get("forward", missing)) for block in blocks]
    snapshots: dict = {}
    try:
        for block in blocks:
            block.forward = _checkpointing(block, block.forward, around_recompute, snapshots)
        yield len(blocks)
    finally:
        for block, original in originals:
            if original is missing:
                block.__dict__.pop("forward", None)
            else:
                block.forward = original
