"""`ComfyDenoiser`: the core trainer's `Denoiser` protocol on a ComfyUI MODEL + CLIP.

- `lora_root` is the diffusion model module the UnHype targets name (`model.model.diffusion_model`).
- `embed` returns the CLIP `pooled_output`, the vector the inference Conditioner reads.
- `sample_xt` is ESD partial sampling with the frozen model: ComfyUI's own CFGGuider (conditioning
  prepared for the architecture, CFG, the model's wrappers) drives a sampler that runs
  deterministic Euler (= DDIM) steps over the first `t_enc` sigmas of an N-step schedule and keeps
  the latent where it stopped, in the model's input space.
- `predict` returns apply_model's denoised estimate (the same space for eps, v and flow models),
  with each row's own prompt, conditioning prepared by `comfy.samplers.process_conds` (the
  architecture's `extra_conds`) and batched with `comfy.samplers.cond_cat`, as sampling does.
  Rows whose conditionings cannot share a call (Qwen-Image's and Z-Image's text rows are not
  padded: prompts of unlike lengths differ in shape) run as separate calls, grouped by the
  test ComfyUI's own sampling uses (`comfy.samplers.cond_equal_size`).

Why the ESD target is right in the denoised space for every family: the model's raw output
(eps, v, or a flow model's velocity) and the denoised estimate x0 are affine in each other at a
fixed x_t and sigma with the same coefficients for every prompt (flow: x0 = x_t - sigma·v; eps:
x0 = x_t - sigma·eps), so ESD's e_anchor - eta·(e_concept - e_anchor) computed on x0 estimates
is the x0 of the same target computed on velocities. Only the loss's scale differs, by the
coefficient squared (sigma^2 for flow), which the learning rate absorbs; Flux.1 trains this way.
  With `gradient_checkpointing` (default) a prediction that autograd records keeps only each
  block's inputs and recomputes the block in the backward (nodes/training/grad_checkpoint.py).

Everything runs under `torch.inference_mode(False)`: callers (the Trainer node) wrap the whole
training in it; tensors that came from inference mode (CLIP output, weights of a checkpoint
loaded in a ComfyUI run) are cloned before they can be saved for backward.
"""

from __future__ import annotations

import collections
import contextlib
import uuid

import comfy.k_diffusion.sampling as k_diffusion_sampling
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import torch

from ...unhype import families
from ..models import model_family
from .grad_checkpoint import gradient_checkpointing as checkpointed_blocks


def _clone_if_inference(value):
    if isinstance(value, torch.Tensor) and value.is_inference():
        return value.clone()
    return value


def make_trainable(module: torch.nn.Module) -> int:
    """requires_grad_(False) on every parameter and replace inference tensors by normal copies.

    Inference tensors (weights loaded inside a ComfyUI run, which executes nodes under
    torch.inference_mode) cannot be saved for backward. Returns how many were replaced.
    """
    replaced = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is None:
                    continue
                if param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                    replaced += 1
                else:
                    param.requires_grad_(False)
            for name, buffer in list(sub._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    sub._buffers[name] = buffer.clone()
                    replaced += 1
    return replaced


_IADD = torch.Tensor.__iadd__


def _add_for_autograd(tensor, other):
    """`tensor += other` as a new tensor when autograd records it: ComfyUI's Flux blocks add
    their residuals in place (`img += ...`) after saving `img` for the backward, which fails
    ("modified by an inplace operation") once a LoRA makes the stream require grad.

    Why the class method and not something narrower: the `+=` is inside ComfyUI's block code,
    and a per-thread torch function mode sees it only as `add_`, the same call as an explicit
    `x.add_(y)` whose in-place effect the caller relies on (made out of place, it would be lost).
    The swap lasts one prediction in ComfyUI's single execution thread, changes nothing where
    autograd does not record, and is restored in a finally (tests/test_training_memory.py)."""
    if torch.is_grad_enabled() and (tensor.requires_grad or getattr(other, "requires_grad", False)):
        return torch.add(tensor, other).to(tensor.dtype)
    return _IADD(tensor, other)


@contextlib.contextmanager
def _training_ops():
    """What a prediction autograd records runs under: ComfyUI's models take their differentiable
    paths (Flux's rope in PyTorch, not comfy_kitchen's kernel, which has no backward) only while
    model_management.in_training is set, as ComfyUI's own trainer sets it; in-place residual
    additions become new tensors (`_add_for_autograd`). Both are restored on exit."""
    mm = comfy.model_management
    before = getattr(mm, "in_training", False)
    mm.in_training = True
    torch.Tensor.__iadd__ = _add_for_autograd
    try:
        yield
    finally:
        torch.Tensor.__iadd__ = _IADD
        mm.in_training = before


class _PartialSampler(comfy.samplers.Sampler):
    """Deterministic Euler (DDIM for eps models) over the sigmas it is given; keeps the end point.

    The guider passes the end point through `inverse_noise_scaling` and `process_latent_out`;
    `captured` keeps it as the model sees it (input space at the last sigma), which is what
    `predict` and apply_model take.
    """

    def __init__(self):
        self.captured = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
               denoise_mask=None, disable_pbar=False):
        sampling = model_wrap.inner_model.model_sampling
        x = sampling.noise_scaling(sigmas[0], noise, latent_image,
                                   self.max_denoise(model_wrap, sigmas))
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image, model_k.noise = latent_image, noise
        extra_args = dict(extra_args, denoise_mask=denoise_mask)
        x = k_diffusion_sampling.sample_euler(model_k, x, sigmas, extra_args=extra_args,
                                              disable=True)
        self.captured = x.detach().clone()
        return sampling.inverse_noise_scaling(sigmas[-1], x)


class ComfyText:
    """A ComfyUI CLIP's text path as the core reads a prompt (unhype/denoiser.py `embed` and
    `text_states`): what the trainer reads, and all the audit needs (no diffusion model).

    `cond_guidance`: the guidance a distilled family's conditioning carries (None: none);
    `keep`: how many prompts' conditionings to keep, the latest (None: every one; training
    reads a few hundred prompts again and again, the audit thousands once each)."""

    def __init__(self, clip, cond_guidance: float | None = None, keep: int | None = None):
        self.clip, self.cond_guidance, self.keep = clip, cond_guidance, keep
        # prompt -> CONDITIONING (cloned out of inference mode)
        self._raw: collections.OrderedDict[str, list] = collections.OrderedDict()

    def conditioning(self, prompt: str) -> list:
        """CONDITIONING for one prompt, encoded once (the CLIP runs without gradients)."""
        if prompt not in self._raw:
            with torch.no_grad():
                tokens = self.clip.tokenize(prompt)
                cond = self.clip.encode_from_tokens_scheduled(tokens)
            out = []
            for tensor, options in cond:
                options = {k: _clone_if_inference(v) for k, v in options.items()}
                if self.cond_guidance is not None:
                    options.setdefault("guidance", self.cond_guidance)
                out.append([_clone_if_inference(tensor), options])
            self._raw[prompt] = out
            if self.keep is not None and len(self._raw) > self.keep:
                self._raw.popitem(last=False)
        return self._raw[prompt]

    def embed(self, prompts) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            pooled = self.conditioning(prompt)[0][1].get("pooled_output")
            if pooled is None:
                raise ValueError("the CLIP gave no pooled_output, which UnHype reads")
            rows.append(pooled.reshape(1, -1)[:1].float().cpu())
        return torch.cat(rows)

    def text_states(self, prompts) -> list[torch.Tensor]:
        return [self.conditioning(prompt)[0][0][0].float().cpu() for prompt in prompts]


class ComfyDenoiser(ComfyText):
    """A frozen ComfyUI model seen through the UnHype trainer's `Denoiser` protocol.

    `guidance` and `resolution` left at 0 or None are the family's (unhype/families.py)."""

    def __init__(self, model, clip, *, guidance: float | None = None, sampling_steps: int = 50,
                 resolution: int | None = None, family: str | None = None,
                 gradient_checkpointing: bool = True):
        if clip is None:
            raise ValueError("UnHype Trainer: no CLIP: the checkpoint has no text encoder; "
                             "connect the CLIP of the model's checkpoint")
        self.family = family or model_family(model)
        spec = families.family(self.family)
        if model.is_dynamic() and getattr(model, "cached_patcher_init", None) is not None:
            # Dynamic VRAM (ComfyUI's server on a GPU) streams weights per call; training
            # backpropagates through the whole UNet, so use ComfyUI's non-dynamic delegate of the
            # same checkpoint, as CFGGuider does for hooked conditioning. (Not run on a GPU yet.)
            model = model.get_non_dynamic_delegate()
        self.patcher = model
        self.base = model.model
        self.distilled = spec.distilled
        # ESD samples with CFG (the paper: ~9 for SD); a guidance-distilled model (Flux) has no
        # uncond pass, the guidance value travels in the conditioning instead.
        run = families.resolve(self.family, {"guidance": guidance, "resolution": resolution})
        self.guidance = float(run["guidance"])
        super().__init__(clip, self.guidance if self.distilled else None)
        if sampling_steps < 2:
            raise ValueError("sampling_steps must be at least 2")
        self.sampling_steps = int(sampling_steps)
        fmt = self.base.latent_format
        ratio = int(getattr(fmt, "spacial_downscale_ratio", 8))
        patch = spec.latent_patch
        side = max(1, int(run["resolution"]) // ratio)
        side = max(patch, side - side % patch)
        # a video model's latent (Wan; Qwen-Image reads Wan's VAE latents too) has a frame axis:
        # one frame, an image
        frames = (1,) if getattr(fmt, "latent_dimensions", 2) == 3 else ()
        self.latent_shape = (fmt.latent_channels, *frames, side, side)
        sampling = self.base.model_sampling
        # ESD's DDIM steps over the discrete schedule of eps/v models; flow-matching models
        # (Flux, Qwen-Image, Wan, Z-Image) sample on "simple", as their own workflows do
        flow = isinstance(sampling, comfy.model_sampling.CONST)
        scheduler = "ddim_uniform" if hasattr(sampling, "sigmas") and not flow else "simple"
        self.sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler,
                                                      self.sampling_steps).float().cpu()
        comfy.model_management.load_models_gpu([model], force_full_load=True)
        self.device = torch.device(model.load_device)
        make_trainable(self.base)
        self.lora_root = self.base.diffusion_model
        self._processed: dict[str, dict] = {}  # prompt -> processed cond dict for predict
        self.gradient_checkpointing = bool(gradient_checkpointing)

    def _latent(self, rows: int = 1) -> torch.Tensor:
        return torch.zeros((rows, *self.latent_shape))

    def _processed_cond(self, prompt: str) -> dict:
        if prompt not in self._processed:
            conds = comfy.sampler_helpers.convert_cond(self.conditioning(prompt))
            if len(conds) != 1:
                raise ValueError(f"expected one conditioning entry for a prompt, got {len(conds)}")
            latent = self._latent().to(self.device)
            processed = comfy.samplers.process_conds(
                self.base, latent, {"positive": conds}, self.device, latent_image=latent,
                seed=0)["positive"][0]
            for key in ("area", "mask", "control", "hooks", "timestep_start", "timestep_end"):
                if key in processed:
                    raise ValueError(f"UnHype training cannot use a conditioning with {key!r}")
            self._processed[prompt] = processed
        return self._processed[prompt]

    # -- the protocol --
    def sample_xt(self, prompts, count: int, generator: torch.Generator):
        """ESD's x_t: the frozen model's partial sampling of each prompt, one sample per
        ComfyUI sampler call (each stops at its own step of the schedule). A distilled family
        (Flux.1 guidance-distilled, Z-Image Turbo and Flux.2 Klein step-distilled) samples at
        CFG 1 with no uncond pass, as its workflows do; the others at the family's CFG against the
        empty prompt. Either way the ESD target (unhype/objectives.py) still reads the
        anchor's prediction, the empty prompt's where the anchor leaves the concept out: a
        distilled model predicts for an empty prompt like any other, it only has no use for
        that prediction in its own sampling."""
        xs, sigmas = [], []
        for prompt in (p for p in prompts for _ in range(count)):
            t_enc = int(torch.randint(1, self.sampling_steps, (1,), generator=generator))
            noise = torch.randn((1, *self.latent_shape), generator=generator)
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            guider = comfy.samplers.CFGGuider(self.patcher)
            if self.distilled:
                guider.inner_set_conds({"positive": self.conditioning(prompt)})
                guider.set_cfg(1.0)
            else:
                guider.set_conds(self.conditioning(prompt), self.conditioning(""))
                guider.set_cfg(self.guidance)
            sampler = _PartialSampler()
            schedule = self.sigmas[: t_enc + 1]
            guider.sample(noise, self._latent(), sampler, schedule, disable_pbar=True, seed=seed)
            xs.append(sampler.captured.float())
            sigmas.append(schedule[-1:].float())
        return torch.cat(xs).to(self.device), torch.cat(sigmas).to(self.device)

    def _transformer_options(self) -> dict:
        options = comfy.model_patcher.create_model_options_clone(self.patcher.model_options)
        topts = options.setdefault("transformer_options", {})
        merge = comfy.patcher_extension.merge_nested_dicts
        merge(topts.setdefault("wrappers", {}), self.patcher.wrappers, copy_dict1=False)
        merge(topts.setdefault("callbacks", {}), self.patcher.callbacks, copy_dict1=False)
        return topts

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, prompts) -> torch.Tensor:
        prompts = list(prompts)
        if len(prompts) != x_t.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {x_t.shape[0]} rows")
        entries = [self._processed_cond(p) for p in prompts]
        # Encoding a new prompt loads the CLIP, which may have pushed the UNet out of VRAM on a
        # small GPU: make sure it is (fully) loaded, as every sampler call does. Cheap when it is.
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        x_t = x_t.to(self.device)
        t = t.to(self.device).float()
        parts = [comfy.samplers.get_area_and_mult(entry, x_t[row:row + 1], t[row:row + 1])
                 for row, entry in enumerate(entries)]
        groups: list[list[int]] = []  # rows that can share a model call, as sampling batches
        for row, part in enumerate(parts):
            group = next((g for g in groups if comfy.samplers.cond_equal_size(
                parts[g[0]].conditioning, part.conditioning)), None)
            if group is None:
                groups.append([row])
            else:
                group.append(row)
        if len(groups) > 1 and torch.is_grad_enabled():
            # a row LoRA (unhype/lora.py) names rows of one batch, which a split would renumber
            raise ValueError(
                f"these {len(prompts)} prompts' conditionings cannot share one model call (their "
                "text rows differ in length), and a prediction that trains must be one call: "
                "predict them one prompt at a time")
        outputs = [self._call(x_t[rows], t[rows], [parts[r].conditioning for r in rows],
                              [entries[r].get("uuid", uuid.uuid4()) for r in rows])
                   for rows in groups]
        if len(groups) == 1:
            return outputs[0]
        order = torch.tensor([row for rows in groups for row in rows], device=x_t.device)
        return torch.cat(outputs).index_select(0, torch.argsort(order))

    def _call(self, x_t, t, conditionings, uuids) -> torch.Tensor:
        """One apply_model call over rows whose conditionings concatenate."""
        conditioning = comfy.samplers.cond_cat(conditionings)
        topts = self._transformer_options()
        topts["cond_or_uncond"] = [0] * x_t.shape[0]
        topts["uuids"] = uuids
        topts["sigmas"] = t
        if not torch.is_grad_enabled():
            return self.base.apply_model(x_t, t, transformer_options=topts, **conditioning)
        blocks = checkpointed_blocks(self.lora_root, around_recompute=_training_ops) \
            if self.gradient_checkpointing else contextlib.nullcontext()
        with _training_ops(), blocks:
            return self.base.apply_model(x_t, t, transformer_options=topts, **conditioning)
