"""The trigger vector (unhype/trigger.py): what it pools, the rows it skips, the down-projection
for wide encoders, and that a network records which trigger it reads."""

import pytest
import torch

from unhype.fileformat import load_unhype, save_unhype
from unhype.hypernet import HyperNetConfig, HyperNetwork, lora_norm, parameter_count
from unhype.network import NetworkInfo, UnHypeNetwork
from unhype.settings import PROJECT_ABOVE, PROJECTION_WIDTH, TrainingSettings, build_configs
from unhype.targets import Target
from unhype.trigger import TriggerSpec, cond_pooled, measure_trigger, read_trigger, shared_rows
from unhype.world import load_world

TARGETS = [Target("a.to_k", 16, 8), Target("a.to_v", 16, 8)]


@pytest.fixture(scope="module")
def world():
    return load_world()


def test_cond_pooled_is_the_mean_and_max_after_the_skipped_rows():
    rows = torch.tensor([[9.0, 9.0], [1.0, 4.0], [3.0, 0.0], [2.0, 2.0]])
    vector = cond_pooled([rows], skip=1)
    assert torch.equal(vector, torch.tensor([[2.0, 2.0, 3.0, 4.0]]))
    with pytest.raises(ValueError, match="no rows after the 4"):
        cond_pooled([rows], skip=4)


def test_trailing_zero_rows_are_padding_not_prompt():
    """umT5 (Wan) pads every prompt to 512 rows with zeros: they are left out, so a padded cond
    pools as the unpadded one, whose max may be negative; a zero row inside the prompt counts."""
    prompt = torch.tensor([[9.0, 9.0], [-1.0, -4.0], [-3.0, -2.0]])
    padded = torch.cat([prompt, torch.zeros(509, 2)])
    torch.testing.assert_close(cond_pooled([padded], skip=1), cond_pooled([prompt], skip=1),
                               rtol=0, atol=0)
    assert torch.equal(cond_pooled([padded], skip=1), torch.tensor([[-2.0, -3.0, -1.0, -2.0]]))
    inner = torch.cat([prompt[:2], torch.zeros(1, 2), prompt[2:], torch.zeros(4, 2)])
    assert torch.equal(cond_pooled([inner], skip=1), torch.tensor([[-4 / 3, -2.0, 0.0, 0.0]]))


def test_a_cond_all_zero_after_the_skipped_rows_is_refused():
    rows = torch.cat([torch.ones(1, 2), torch.zeros(5, 2)])
    with pytest.raises(ValueError, match=r"shape \[6, 2\] is all zero after the 1 rows"):
        cond_pooled([rows], skip=1)


def test_the_world_clip_pads_with_no_zero_rows(world):
    """The proving ground's tiny CLIP pads with end-token states, never zeros: its cond-pooled
    triggers are what they were before trailing zero rows were left out."""
    states = world.denoiser.text_states(["red", "a red circle on a blue square", ""])
    assert all(bool(s.ne(0).any(1).all()) for s in states)


def test_shared_rows_counts_the_leading_rows_alike_in_every_prompt():
    prefix = torch.ones(2, 3)
    a, b = torch.cat([prefix, torch.zeros(2, 3)]), torch.cat([prefix, torch.full((2, 3), 5.0)])
    assert shared_rows([a, b]) == 2
    assert shared_rows([a, a]) == 3  # every row alike: the last one is still pooled
    # the same tokens' states rounded apart by another length's kernels are still one row
    assert shared_rows([a, torch.cat([prefix + 1e-6, torch.full((2, 3), 5.0)])]) == 2


def test_the_world_clip_shares_only_its_start_token(world):
    spec = measure_trigger(world.denoiser, "cond-pooled")
    assert spec == TriggerSpec("cond-pooled", 256, 1)
    assert measure_trigger(world.denoiser, "clip-pooled") == TriggerSpec("clip-pooled", 128, 0)
    states = world.denoiser.text_states(["a red circle"])[0]
    torch.testing.assert_close(read_trigger(world.denoiser, ["a red circle"], "cond-pooled", 1),
                               torch.cat([states[1:].mean(0), states[1:].amax(0)])[None])


def test_wide_triggers_get_a_learned_down_projection():
    settings = TrainingSettings(concepts="zebra", preset="custom").validate()
    wide, _ = build_configs(settings, "sd1", ["a dog"], TriggerSpec("cond-pooled", 5120, 3))
    narrow, _ = build_configs(settings, "sd1", ["a dog"], TriggerSpec("cond-pooled", 256, 1))
    assert (wide.input_projection, narrow.input_projection) == (PROJECTION_WIDTH, 0)
    assert (wide.trigger, wide.trigger_skip, wide.embed_dim) == ("cond-pooled", 3, 5120)
    assert 5120 > PROJECT_ABOVE >= 256
    layers = [Target(f"block{i}.to_k", 16, 8) for i in range(16)]  # SD1.x has 32
    projected = HyperNetwork(HyperNetConfig(embed_dim=5120, input_projection=64, hidden=32),
                             layers)
    direct = HyperNetwork(HyperNetConfig(embed_dim=5120, hidden=32), layers)
    assert parameter_count(projected) < parameter_count(direct) / 5
    inputs = torch.randn(3, 5120)
    assert torch.equal(lora_norm(projected(inputs, 0)), torch.zeros(3))  # still zero at s = 0
    assert lora_norm(projected(inputs)).shape == (3,)


def test_a_network_file_records_its_trigger(tmp_path):
    config = HyperNetConfig(embed_dim=256, trigger="cond-pooled", trigger_skip=1,
                            input_projection=64, hidden=32, rank=2)
    network = UnHypeNetwork(config, TARGETS, NetworkInfo("proving-ground", "sd-cross-kv"))
    path = str(tmp_path / "net.safetensors")
    save_unhype(path, network)
    loaded = load_unhype(path)
    assert loaded.config == config
    inputs = torch.randn(2, 256)
    torch.testing.assert_close(loaded.factors(inputs)["a.to_k"].up,
                               network.factors(inputs)["a.to_k"].up)


def test_a_config_from_before_triggers_reads_clip_pooled():
    old = {k: v for k, v in HyperNetConfig().to_dict().items()
           if k not in ("trigger", "trigger_skip", "input_projection")}
    assert HyperNetConfig.from_dict(old).trigger == "clip-pooled"
    with pytest.raises(ValueError, match="trigger must be one of"):
        HyperNetConfig(trigger="t5-pooled")
