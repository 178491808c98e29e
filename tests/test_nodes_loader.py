"""UnHype Loader (model folder, sharing, errors) and UnHype Text Encode (long prompts)."""

import gc
import os
import sys
import time
import weakref

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    CONCEPT,
    FILLER,
    concept_detector,
    forget_parts,
    host,
    make_network,
    make_tiny_clip,
    node,
    pooled_of,
)

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]


@pytest.fixture
def unhype_folder(tmp_path):
    folder_paths = host()[0].folder_paths
    saved = folder_paths.folder_names_and_paths["unhype"]
    folder_paths.folder_names_and_paths["unhype"] = (
        list(saved[0]) + [str(tmp_path)], set(saved[1]))
    yield tmp_path
    folder_paths.folder_names_and_paths["unhype"] = saved


def test_folder_registration_keeps_extra_paths():
    folder_paths = host()[0].folder_paths
    folders = sys.modules[host()[1].__name__ + ".nodes.folders"]
    saved = folder_paths.folder_names_and_paths["unhype"]
    try:  # what extra_model_paths.yaml leaves when it names an "unhype:" folder before we load
        folder_paths.folder_names_and_paths["unhype"] = (["/somewhere/unhype"], set())
        folders.register_folder("unhype")
        paths, extensions = folder_paths.folder_names_and_paths["unhype"]
        assert paths == [os.path.join(folder_paths.models_dir, "unhype"), "/somewhere/unhype"]
        assert extensions == {".safetensors"}
    finally:
        folder_paths.folder_names_and_paths["unhype"] = saved


def test_loader_lists_loads_and_shares(unhype_folder):
    core = host()[2]
    model = ch.build_tiny_sd1_model(host()[0])
    network = make_network(model.model.diffusion_model, seed=1)
    core.save_unhype(str(unhype_folder / "net.safetensors"), network)
    (unhype_folder / "other.ckpt").write_bytes(b"x")
    loader = node("UnHypeLoader")
    choices = loader.INPUT_TYPES()["required"]["unhype_name"][1]["options"]
    assert "net.safetensors" in choices and "other.ckpt" not in choices
    first = loader.execute("net.safetensors")[0]
    assert [t.name for t in first.targets] == [t.name for t in network.targets]
    assert loader.execute("net.safetensors")[0] is first  # a live network is shared
    changed = loader.fingerprint_inputs("net.safetensors")
    time.sleep(0.01)
    core.save_unhype(str(unhype_folder / "net.safetensors"), make_network(
        model.model.diffusion_model, seed=2))
    assert loader.fingerprint_inputs("net.safetensors") != changed
    second = loader.execute("net.safetensors")[0]
    assert second is not first  # rewritten file: loaded again
    emb = torch.randn(1, 64)
    assert not torch.equal(first.factors(emb)[first.targets[0].name].up,
                           second.factors(emb)[second.targets[0].name].up)
    # nothing private keeps a network alive: once ComfyUI (here: the test) lets go, it is freed
    gone = weakref.ref(second)
    del first, second
    gc.collect()
    assert gone() is None


def test_loader_report_and_verify_hash(unhype_folder):
    core = host()[2]
    model = ch.build_tiny_sd1_model(host()[0])
    network = make_network(model.model.diffusion_model, seed=1)
    network.info.training = {"concepts": ["red"], "anchors": {"red": ""}, "concept_count": 1}
    path = unhype_folder / "card.safetensors"
    written = core.save_unhype(str(path), network)
    loader = node("UnHypeLoader")
    assert "verify_hash" in loader.INPUT_TYPES()["optional"]  # old API prompts stay valid
    result = loader.execute("card.safetensors")
    loaded, report = result.result
    assert result.ui == {"text": [report]}
    assert "erases: red (-> left out)" in report and "SD1.x (sd1)" in report
    assert "separation check: not recorded" in report and "not verified" in report
    key = loader.fingerprint_inputs("card.safetensors")
    assert loader.fingerprint_inputs("card.safetensors", verify_hash=True) == key
    checked = loader.execute("card.safetensors", verify_hash=True)
    assert checked[0] is loaded  # the live network is shared: no second load
    assert f"hash {written['modelspec.hash_sha256']}: verified" in checked[1]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="UnHype Loader: .*hash MISMATCH"):
        loader.execute("card.safetensors", verify_hash=True)


def test_loader_errors_are_node_errors(unhype_folder):
    (unhype_folder / "broken.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="UnHype Loader: .*broken.safetensors"):
        node("UnHypeLoader").execute("broken.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        node("UnHypeLoader").execute("missing.safetensors")


# ---------------------------------------------------------------------------------------------
# UnHype Text Encode on a tiny random CLIP-L built with ComfyUI's classes (real tokenizer)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip():
    return make_tiny_clip()


def test_text_encode_catches_a_concept_after_77_tokens(tiny_clip):
    ns = host()[0]
    forget_parts()
    model = ch.build_tiny_sd1_model(ns)
    concept, filler = pooled_of(tiny_clip, CONCEPT), pooled_of(tiny_clip, FILLER)
    network = concept_detector(model, concept, filler)
    prompt = FILLER + " " + CONCEPT
    assert len(tiny_clip.tokenize(prompt)["l"]) == 2

    # CLIPTextEncode + Conditioner: the pooled vector is the first chunk's; the second is unseen
    plain = ch.run_node(ns.nodes.CLIPTextEncode, clip=tiny_clip, text=prompt)[0]
    conditioned, plain_report = ch.run_node(node("UnHypeConditioner"), conditioning=plain,
                                            unhype=network)
    assert "chunk 1 of 2 (tokens 1-77): activation 0.00  <- used" in plain_report
    assert "chunk 2 of 2 (tokens 78-154): NOT SEEN" in plain_report
    assert "WARNING" in plain_report and "UnHype Text Encode" in plain_report

    result = node("UnHypeTextEncode").execute(tiny_clip, prompt, network)
    conditioning, report = result.result
    assert result.ui == {"text": [report]}
    chosen = conditioning[0][1]["model_conds"]["unhype_embedding"].cond[:, 1:]
    torch.testing.assert_close(chosen, concept)  # chunk 2 alone = the concept's own encoding
    torch.testing.assert_close(network.activation(chosen), network.activation(concept))
    assert network.activation(chosen).item() == pytest.approx(1.0)
    assert network.activation(filler).item() == 0.0
    assert "chunk 2 of 2 (tokens 78-154): activation 1.00  <- used" in report
    assert "NOT SEEN" not in report
    # encodes exactly like CLIPTextEncode
    assert torch.equal(plain[0][0], conditioning[0][0])
    assert torch.equal(plain[0][1]["pooled_output"], conditioning[0][1]["pooled_output"])


def test_text_encode_short_prompt_matches_conditioner(tiny_clip):
    ns = host()[0]
    model = ch.build_tiny_sd1_model(ns)
    network = make_network(model.model.diffusion_model, embed_dim=64, seed=8)
    encoded, report = ch.run_node(node("UnHypeTextEncode"), clip=tiny_clip, text=CONCEPT,
                                  unhype=network)
    plain = ch.run_node(ns.nodes.CLIPTextEncode, clip=tiny_clip, text=CONCEPT)[0]
    conditioned = ch.run_node(node("UnHypeConditioner"), conditioning=plain, unhype=network)[0]
    assert torch.equal(encoded[0][1]["model_conds"]["unhype_embedding"].cond,
                       conditioned[0][1]["model_conds"]["unhype_embedding"].cond)
    assert report.splitlines()[1].startswith("prompt: raw LoRA norm")
