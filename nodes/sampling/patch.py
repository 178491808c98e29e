"""A MODEL clone whose every batch row gets its prompt's LoRA at sampling time: what Apply Dynamic
LoRA returns, and what the Trainer's preview samples with."""

import threading
import weakref

import comfy.model_patcher
import comfy.patcher_extension

from ...unhype import TargetMismatchError, resolve_targets
from ...unhype.families import family
from ...unhype.network import FamilyMismatchError, check_family
from ..models import UnsupportedModelError, model_family
from .dynamic_lora import WRAPPER_KEY, DynamicLoRA, mark_positive
from .refresh import PartsAtSampling

#: key of the hypernetworks in the MODEL's additional models (ModelPatcher.set_additional_models)
ADDITIONAL_MODELS_KEY = "unhype_hypernetworks"


class HypernetworkPatcher(comfy.model_patcher.ModelPatcher):
    """The UnHype hypernetwork as a ComfyUI-managed model, resident whole or not at all.

    ComfyUI loads, counts and offloads it with the diffusion model. Its layers are plain
    nn.Linear, which ComfyUI cannot cast to the compute device per call as it does comfy.ops
    layers, so a partial load or unload would leave one module split across two devices. When
    ComfyUI offers less memory than the whole network needs, it stays on the offload device and
    runs there (once per prompt, not per step). It stays in float32: its forward is written in
    float32 and runs once per prompt, so only its size is at stake, and that is now counted.
    """

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False,
             full_load=False):
        whole = full_load or lowvram_model_memory >= self.model_size()
        # with no memory offered and no full load, ComfyUI moves none of the plain layers
        super().load(device_to, lowvram_model_memory if whole else 0, force_patch_weights,
                     full_load=whole)

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        freed = self.loaded_size()
        self.unpatch_model(device_to)  # the whole module, buffers and top-level tensors included
        return freed


#: network -> {(load device, offload device): its one HypernetworkPatcher}, for the network's life
_PATCHERS = weakref.WeakKeyDictionary()
_PATCHERS_LOCK = threading.Lock()


def network_patcher(network, load_device, offload_device) -> HypernetworkPatcher:
    """The network's one patcher for these devices, made on first use and kept while the network
    lives. ComfyUI's loaded-model list holds patchers weakly: a patcher made per Apply run dies
    with its MODEL while the module lives on in the network, a dead entry that makes every later
    model load run a full garbage collection and log "memory leak". The patcher holds the module,
    not the network, so the entry goes when the network does."""
    with _PATCHERS_LOCK:
        patchers = _PATCHERS.setdefault(network, {})
        key = (load_device, offload_device)
        if key not in patchers:
            patchers[key] = HypernetworkPatcher(network.module, load_device=load_device,
                                                offload_device=offload_device)
        return patchers[key]


def attach_hypernetwork(m, network) -> None:
    """Register the network's module as an additional model of the MODEL clone `m` (once)."""
    managed = m.get_additional_models_with_key(ADDITIONAL_MODELS_KEY)
    if any(p.model is network.module for p in managed):
        return
    patcher = network_patcher(network, m.load_device, m.offload_device)
    m.set_additional_models(ADDITIONAL_MODELS_KEY, [*managed, patcher])


def describe_model(model) -> str:
    base = model.model
    config = getattr(base, "model_config", None)
    unet = getattr(config, "unet_config", {}) or {}
    shown = {k: unet[k] for k in ("context_dim", "model_channels", "hidden_size", "adm_in_channels",
                                  "context_in_dim", "depth", "dim", "num_layers") if k in unet}
    family = type(config).__name__ if config is not None else "unknown"
    return f"{type(base).__name__} ({family} {shown})"


def check_model(model, network) -> None:
    """A network runs only on a model of its family (unhype/network.py `check_family`), and one
    that reads CLIP pooled vectors not on a family whose conditioning has none
    (`Family.clip_pooled`); a model outside the table is left to its targets."""
    try:
        name = model_family(model)
    except UnsupportedModelError:
        return
    try:
        check_family(network.info, name)
    except FamilyMismatchError as error:
        raise ValueError(f"Apply Dynamic LoRA: {error}") from None
    entry = family(name)
    if network.config.trigger == "clip-pooled" and not entry.clip_pooled:
        raise ValueError(
            f"Apply Dynamic LoRA: the UnHype network '{network.info.title}' reads CLIP pooled "
            f"embeddings (trigger clip-pooled, made for {network.info.base_arch}), and a "
            f"{entry.label} model's conditioning has none (its text encoder is "
            f"{entry.pooled_encoder}): use a network with the cond-pooled trigger made for "
            f"{entry.label}.")


def dynamic_lora_model(model, network, strength: float, mode: str):
    """A clone of `model` with the network attached (ComfyUI manages its memory) and the
    sampling-time wrappers that give each row its prompt's LoRA; `model` is left as it was."""
    check_model(model, network)
    m = model.clone()
    try:
        resolve_targets(m.model.diffusion_model, network.targets)
    except TargetMismatchError as error:
        raise ValueError(
            f"Apply Dynamic LoRA: the UnHype network '{network.info.title}' was made for "
            f"{network.info.base_arch} (target preset {network.info.target_preset}), but the "
            f"model is {describe_model(m)}. {error}"
        ) from None
    attach_hypernetwork(m, network)
    state = DynamicLoRA(network, strength, mode)
    wrappers = comfy.patcher_extension.WrappersMP
    m.add_wrapper_with_key(wrappers.APPLY_MODEL, WRAPPER_KEY, state)
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, WRAPPER_KEY,
                            state.cache.release)
    if mode == "conditional only" and not m.get_wrappers(wrappers.PREDICT_NOISE, WRAPPER_KEY):
        m.add_wrapper_with_key(wrappers.PREDICT_NOISE, WRAPPER_KEY, mark_positive)
    if not m.get_wrappers(wrappers.SAMPLER_SAMPLE, WRAPPER_KEY):
        m.add_wrapper_with_key(wrappers.SAMPLER_SAMPLE, WRAPPER_KEY, PartsAtSampling(network))
    return m
