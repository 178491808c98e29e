"""UnHype Bake LoRA: the baked file, loaded by ComfyUI's own LoraLoaderModelOnly, samples what
Apply Dynamic LoRA samples for the baked prompt (tiny SD1 with a binding norm cap, tiny Flux with
sliced fused targets); names, metadata and errors."""

import json
import sys

import pytest
import torch
from safetensors import safe_open

import comfy_host as ch
from _nodes_helpers import forget_parts, host, make_network, node, sample_image
from test_nodes_models import TINY_FLUX, build

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # the per-row tests' (test_nodes_models.py)


def condition(network, cond):
    return node("UnHypeConditioner").execute(cond, network)[0]


def bake(network, conditioning, strength=1.0, **inputs):
    inputs = {"save_name": "baked", "key_format": "comfyui", **inputs}
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=conditioning,
                               unhype=network, strength=strength, **inputs)
    return name, report


def with_lora(model, name):
    return ch.run_node(host()[0].nodes.LoraLoaderModelOnly, model=model, lora_name=name,
                       strength_model=1.0)[0]


def dynamic(model, network, strength=1.0):
    return node("UnHypeApplyDynamicLoRA").execute(model, network, strength, "all rows")[0]


def uncapped_output_norms(network, cond, strength):
    """Each cross-attention target's LoRA output norm on the prompt's tokens, without a cap."""
    core = host()[2]
    factors = network.factors(cond[0][1]["pooled_output"])
    return [float(core.row_lora_delta(cond[0][0], factors[t.name],
                                      torch.tensor([strength])).norm()) for t in network.targets]


def test_sd1_baked_file_samples_like_apply_dynamic_lora_with_a_binding_cap(tiny_sd1_model, loras):
    network = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=64, seed=7)
    cond, negative = ch.make_cond(64, seed=1), ch.make_cond(64, seed=2)
    norms = uncapped_output_norms(network, cond, 0.8)
    network.config.norm_cap = sorted(norms)[len(norms) // 2]  # binds on half of the layers
    positive = condition(network, cond)
    name, report = bake(network, positive, strength=0.8)
    assert name == "baked.safetensors" and "binds on 16" in report, report
    baked = with_lora(tiny_sd1_model, name)
    assert set(baked.patches) == {f"diffusion_model.{t.name}.weight" for t in network.targets}
    # cfg 1: only the positive runs, so the static LoRA meets exactly the rows it was baked for
    expected = sample_image(dynamic(tiny_sd1_model, network, 0.8), positive, negative, 4)
    got = sample_image(baked, positive, negative, 4)
    base = sample_image(tiny_sd1_model, positive, negative, 4)
    torch.testing.assert_close(got, expected, **TOLERANCE)
    assert (got - base).abs().max() > 100 * (got - expected).abs().max()
    # cfg 5 with the same prompt on both branches: every row is the baked prompt's
    torch.testing.assert_close(
        sample_image(baked, positive, positive, 4, cfg=5.0),
        sample_image(dynamic(tiny_sd1_model, network, 0.8), positive, positive, 4, cfg=5.0),
        **TOLERANCE)
    # without the cap folded in, the file would differ: the cap really binds
    network.config.norm_cap = None
    uncapped = sample_image(dynamic(tiny_sd1_model, network, 0.8), positive, negative, 4)
    assert (uncapped - expected).abs().max() > 100 * (got - expected).abs().max()


def test_kohya_keys_load_the_same_weights(tiny_sd1_model, loras):
    network = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=64, seed=8)
    positive = condition(network, ch.make_cond(64, seed=3))
    comfy_name, _ = bake(network, positive)
    kohya_name, _ = bake(network, positive, key_format="kohya")
    assert kohya_name == "baked_2.safetensors"  # never overwritten
    with safe_open(str(loras / kohya_name), "pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith("lora_unet_") for k in keys) and len(keys) == 3 * len(
        network.targets)
    a, b = with_lora(tiny_sd1_model, comfy_name), with_lora(tiny_sd1_model, kohya_name)
    assert set(a.patches) == set(b.patches)
    for key in a.patches:
        assert torch.equal(a.patch_weight_to_device(key, return_weight=True),
                           b.patch_weight_to_device(key, return_weight=True))


def test_flux_sliced_targets_touch_only_the_value_slice(loras):
    ns = host()[0]
    model = build(ns.supported_models.Flux, TINY_FLUX)
    network = make_network(model.model.diffusion_model, "flux-value-out", embed_dim=768,
                           base_arch="flux", seed=4)
    positive = condition(network, ch.make_cond(64, seed=1, pooled_dim=768))
    negative = condition(network, ch.make_cond(64, seed=2, pooled_dim=768))
    name, report = bake(network, positive)
    assert "norm cap: none" in report
    baked = with_lora(model, name)
    sliced = [t for t in network.targets if t.out_slice is not None]
    assert sliced
    for target in sliced:
        key = f"diffusion_model.{target.name}.weight"
        before = model.model.state_dict()[key].clone()
        after = baked.patch_weight_to_device(key, return_weight=True)
        low, high = target.out_slice
        assert torch.equal(after[:low], before[:low]) and torch.equal(after[high:], before[high:])
        assert (after[low:high] - before[low:high]).abs().max() > 1e-3
    expected = sample_image(dynamic(model, network), positive, negative, 16)
    got = sample_image(baked, positive, negative, 16)
    torch.testing.assert_close(got, expected, **TOLERANCE)
    assert (got - sample_image(model, positive, negative, 16)).abs().max() > 1e-3


def test_flux_cap_is_not_baked_and_the_report_says_so(loras):
    ns = host()[0]
    model = build(ns.supported_models.Flux, TINY_FLUX)
    network = make_network(model.model.diffusion_model, "flux-value-out", embed_dim=768,
                           base_arch="flux", seed=4, norm_cap=1e9)  # a cap that never binds
    positive = condition(network, ch.make_cond(64, seed=1, pooled_dim=768))
    name, report = bake(network, positive)
    assert "read the image" in report and "not baked" in report
    expected = sample_image(dynamic(model, network), positive, positive, 16)
    torch.testing.assert_close(sample_image(with_lora(model, name), positive, positive, 16),
                               expected, **TOLERANCE)


def test_metadata_names_network_and_prompt_or_its_hash(tiny_sd1_model, loras):
    network = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=64, seed=9)
    network.info.title = "erase tench"
    positive = condition(network, ch.make_cond(64, seed=4))
    network.info.training = {"concepts": ["tench"], "concept_count": 1}
    name, _ = bake(network, positive, prompt="a tench in a pond", save_name="../tench")
    with safe_open(str(loras / name), "pt") as handle:
        meta = handle.metadata()
    assert name == "tench.safetensors"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.title"] == "tench"
    # ModelSpec 1.0.1 like the network files: resolution, author and the tensor-only hash
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.author"] == "anonymous"
    assert meta["modelspec.hash_sha256"] == host()[2].fileformat.file_sha256(str(loras / name))
    assert "'erase tench'" in meta["modelspec.description"]
    assert "'a tench in a pond'" in meta["modelspec.description"]
    source = json.loads(meta["unhype.baked_from"])
    assert source["prompt"] == "a tench in a pond" and source["concepts"] == ["tench"]

    network.info.training = {"concepts_sha256": "ab" * 32, "concept_count": 1}  # hidden
    name, report = bake(network, positive, prompt="a tench in a pond", save_name="tench")
    with safe_open(str(loras / name), "pt") as handle:
        meta = handle.metadata()
    assert "tench in a pond" not in json.dumps(meta) and "SHA-256" in report
    digest = json.loads(meta["unhype.baked_from"])["prompt_sha256"]
    assert digest in meta["modelspec.description"] and len(digest) == 64


def real_training_record(hide: bool) -> dict:
    """The record the core trainer writes (one step on the toy denoiser, concept "zebra")."""
    from test_training import make_trainer

    return make_trainer(steps=1, hide_concepts=hide).run().network.info.training


@pytest.mark.parametrize("record", ["none", "listed", "hidden"])
def test_hidden_only_when_hidden_and_the_prompt_stored_otherwise(tiny_sd1_model, loras, record):
    """A network without a training record (hand-built, or older) hides nothing: the baked file
    stores the prompt and the report says there is no record. Only a record made with
    hide_concepts keeps the prompt down to its SHA-256."""
    network = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=64, seed=11)
    if record != "none":
        network.info.training = real_training_record(hide=record == "hidden")
    prompt = "a zebra in a field"
    name, report = bake(network, condition(network, ch.make_cond(64, seed=4)), prompt=prompt)
    with safe_open(str(loras / name), "pt") as handle:
        meta = handle.metadata()
    source = json.loads(meta["unhype.baked_from"])
    if record == "hidden":
        assert "zebra" not in json.dumps(meta) + report
        assert source["prompt_sha256"] in meta["modelspec.description"]
        assert "concepts: hidden (1, SHA-256 " in report and "hides its concepts" in report
        return
    assert source["prompt"] == prompt and repr(prompt) in meta["modelspec.description"]
    assert "prompt_sha256" not in source and "hides" not in report and "SHA-256" not in report
    if record == "none":
        assert source["training_record"].startswith("none")
        assert "no training record" in meta["modelspec.description"]
        assert "concepts: no training record (a hand-built or older network)" in report
    else:
        assert source["concepts"] == ["zebra"] and "concepts: zebra" in report
        assert "training_record" not in source


def test_clear_errors(tiny_sd1_model, loras):
    network = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=64, seed=9)
    plain = ch.make_cond(64, seed=5)
    with pytest.raises(ValueError, match="no UnHype embedding: connect"):
        bake(network, plain)
    two = condition(network, plain + ch.make_cond(64, seed=6))
    with pytest.raises(ValueError, match="2 entries with different prompts"):
        bake(network, two)
    other = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=32, seed=9)
    with pytest.raises(ValueError, match="carries 64-d embeddings but the network"):
        bake(other, condition(network, plain))
    assert list(loras.iterdir()) == []


def test_a_concat_after_the_conditioner_is_read_as_sampling_reads_it(tiny_sd1_model, loras):
    """Conditioner, then Conditioning (Concat): the entry keeps the first part's embedding, and
    Apply Dynamic LoRA re-reads it at sampling time; the bake reads the same (stronger) part."""
    ns = host()[0]
    network = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=64, seed=10)
    first, second = ch.make_cond(64, seed=7), ch.make_cond(64, seed=8)
    pooled = torch.cat([c[0][1]["pooled_output"] for c in (first, second)])
    weak, strong = network.activation(pooled).argsort().tolist()
    first, second = (first, second)[weak], (first, second)[strong]
    forget_parts()
    conditioned = condition(network, first)
    condition(network, second)  # seen, so it is found again inside the joined entry
    joined = ch.run_node(ns.nodes.ConditioningConcat, conditioning_to=conditioned,
                         conditioning_from=second)[0]
    name, report = bake(network, joined)
    with safe_open(str(loras / name), "pt") as handle:
        source = json.loads(handle.metadata()["unhype.baked_from"])
    bake_core = sys.modules[host()[1].__name__ + ".unhype.bake"]
    assert source["embedding_sha256"] == bake_core.tensor_sha256(pooled[strong:strong + 1])


def test_a_gated_prompt_bakes_to_a_lora_that_changes_nothing(tiny_sd1_model, loras):
    """Apply Dynamic LoRA gives a prompt under the gate no LoRA: its baked file is all zeros."""
    network = make_network(tiny_sd1_model.model.diffusion_model, embed_dim=64, seed=10)
    cond, negative = ch.make_cond(64, seed=11), ch.make_cond(64, seed=12)
    core = host()[2]
    norm = float(core.lora_norm(network.factors(cond[0][1]["pooled_output"]))[0])
    network.info.gate_threshold = 2 * norm
    positive = condition(network, cond)
    name, report = bake(network, positive)
    assert "untouched: identical to the base model" in report and "all zeros" in report, report
    with safe_open(str(loras / name), "pt") as handle:
        ups = [handle.get_tensor(k) for k in handle.keys() if k.endswith("lora_up.weight")]
        meta = handle.metadata()
    assert len(ups) == len(network.targets) and all(not up.any() for up in ups)
    assert json.loads(meta["unhype.baked_from"])["gated"] is True
    base = sample_image(tiny_sd1_model, positive, negative, 4, cfg=5.0)
    for patched in (with_lora(tiny_sd1_model, name), dynamic(tiny_sd1_model, network)):
        assert torch.equal(sample_image(patched, positive, negative, 4, cfg=5.0), base)
    network.info.gate_threshold = norm / 2  # over the gate: an ordinary, non-zero bake
    name, report = bake(network, positive)
    with safe_open(str(loras / name), "pt") as handle:
        assert any(handle.get_tensor(k).any() for k in handle.keys()
                   if k.endswith("lora_up.weight"))
    assert "gets a LoRA" in report and "all zeros" not in report
