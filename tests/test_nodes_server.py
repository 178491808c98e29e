"""End to end: the real ComfyUI server (CPU) with the pack in custom_nodes."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch

import comfy_host as ch
from _workflow_api import to_api, validate

pytestmark = pytest.mark.host

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
DISPLAY = {"UnHypeLoader": "UnHype Loader", "UnHypeConditioner": "UnHype Conditioner",
           "UnHypeTextEncode": "UnHype Text Encode",
           "UnHypeApplyDynamicLoRA": "Apply Dynamic LoRA"}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_object_info_lists_the_nodes(object_info):
    for name, display in DISPLAY.items():
        assert object_info[name]["display_name"] == display
        assert object_info[name]["category"] == "UnHype"
    assert object_info["UnHypeApplyDynamicLoRA"]["input"]["required"]["mode"][1]["options"] == [
        "conditional only", "all rows"]


def pack_nodes_served(object_info) -> dict:
    return {name: info for name, info in object_info.items()
            if info.get("python_module") == f"custom_nodes.{ch.PACK_DIR_NAME}"}


def test_every_node_has_a_help_page_as_the_help_panel_fetches_it(comfy_server, object_info):
    """ComfyUI's node help panel fetches /extensions/<pack>/docs/<NodeId>.md (WEB_DIRECTORY/docs)
    and resolves the page's pictures against that folder."""
    ours = pack_nodes_served(object_info)
    assert set(DISPLAY) <= set(ours)
    docs = f"/extensions/{ch.PACK_DIR_NAME}/docs/"
    for name, info in sorted(ours.items()):
        status, body = comfy_server.request("GET", f"{docs}{name}.md")
        assert status == 200, f"{name}: no help page web/docs/{name}.md"
        page = body.decode()
        assert page.startswith(f"# {info['display_name']}"), name
        for heading in ("## Inputs", "## Outputs", "## Example", "## Known limits"):
            assert heading in page, f"{name}: no '{heading}'"
        assert "Paraphrases can get through" in page and "runtime adapter" in page, name
        for output in info["output_name"]:
            assert f"**{output.lower()}**" in page.lower(), f"{name}: output {output} undescribed"
        pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
        assert pictures, f"{name}: no picture"
        for picture in pictures:
            assert comfy_server.request("GET", docs + picture)[0] == 200, (name, picture)
    # only scripts are loaded as extensions, not the pages
    assert all(e.endswith(".js") for e in comfy_server.get_json("/extensions"))


def test_library_metadata(object_info):
    for name, info in pack_nodes_served(object_info).items():
        assert "concept erasure" in info["search_aliases"], name
        assert len(info["output_tooltips"]) == len(info["output"]), name
    trainer = object_info["UnHypeTrainer"]
    assert trainer["experimental"] is True
    assert {"unlearning", "forget", "ESD", "safety", "censor"} <= set(trainer["search_aliases"])
    advanced = [k for k, v in trainer["input"].get("optional", {}).items()
                if len(v) > 1 and v[1].get("advanced")]
    assert "eta" in advanced  # collapsed on the node


def test_workflows_and_script_are_served(comfy_server):
    templates = comfy_server.get_json("/workflow_templates")
    assert {"flux_unhype", "sd15_unhype", "sdxl_unhype", "qwenimage_unhype", "zimage_unhype",
            "flux2_klein_unhype", "wan_unhype"} <= set(
        templates[ch.PACK_DIR_NAME])
    for name in templates[ch.PACK_DIR_NAME]:  # the template browser's thumbnail: <name>.jpg
        status, body = comfy_server.request(
            "GET", f"/api/workflow_templates/{ch.PACK_DIR_NAME}/{name}.jpg")
        assert status == 200 and body[:3] == b"\xff\xd8\xff", f"{name}: no thumbnail"
    blueprints = [e["name"] for e in comfy_server.get_json("/global_subgraphs").values()
                  if e["info"]["node_pack"] == f"custom_nodes.{ch.PACK_DIR_NAME}"]
    assert blueprints == ["UnHype erase"]
    extensions = comfy_server.get_json("/extensions")
    script = [e for e in extensions if e.endswith("/unhype.js")]
    assert script, extensions
    status, body = comfy_server.request("GET", script[0])
    assert status == 200 and b"unhype.report" in body


#: the nodes that take the two prompts: KSampler, the experts' KSamplerAdvanced, CFGGuider
PROMPTED = ("KSampler", "KSamplerAdvanced", "CFGGuider")


@pytest.mark.parametrize("name", ["sd15_unhype.json", "sdxl_unhype.json", "flux_unhype.json",
                                  "flux2_klein_unhype.json", "qwenimage_unhype.json",
                                  "zimage_unhype.json", "wan_unhype.json"])
def test_workflow_is_valid_against_object_info(object_info, name):
    workflow = json.loads((WORKFLOWS / name).read_text())
    assert validate(workflow, object_info) == []
    types = [n["type"] for n in workflow["nodes"]]
    assert "Note" in types and types.count("UnHypeConditioner") == 2
    api = to_api(workflow, object_info)
    conditioners = {k for k, n in api.items() if n["class_type"] == "UnHypeConditioner"}
    prompted = [n for n in api.values() if n["class_type"] in PROMPTED]
    assert prompted
    for node in prompted:
        assert {node["inputs"]["positive"][0], node["inputs"]["negative"][0]} == conditioners
        # every model that samples is patched (Wan 2.2: both experts)
        model = node["inputs"]["model"][0]
        assert api[model]["class_type"] == "UnHypeApplyDynamicLoRA", (name, node)
    # distilled at cfg 1 (Flux.1 dev, Klein, Z-Image Turbo): the LoRA on every row
    modes = {n["inputs"]["mode"] for n in api.values()
             if n["class_type"] == "UnHypeApplyDynamicLoRA"}
    assert modes == {"all rows" if name.startswith(("flux", "zimage")) else "conditional only"}


def object_info_fresh(server):
    return server.object_info("UnHypeLoader")


def random_sd1_network(path: Path, core) -> Path:
    """A small random UnHype network whose targets come from the SD1.5 test checkpoint's UNet."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops

    with torch.device("meta"):
        unet = oai.UNetModel(**ch.sd15_unet_config("sd15"),
                             operations=comfy.ops.disable_weight_init)
    targets = core.targets_from_preset(unet, "sd-cross-kv")
    config = core.HyperNetConfig(embed_dim=768, rank=2, hidden=16)
    network = core.UnHypeNetwork(config, targets, core.NetworkInfo("sd1", "sd-cross-kv"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    core.save_unhype(str(path), network)
    return path


def test_sd15_workflow_runs(comfy_server, object_info, sd15_checkpoint, unhype_pack, tmp_path):
    import sys

    core = sys.modules[unhype_pack.__name__ + ".unhype"]
    ckpt = comfy_server.add_model("checkpoints", sd15_checkpoint)
    net = comfy_server.add_model(
        "unhype", random_sd1_network(tmp_path / "tiny_sd1.safetensors", core))
    choices = object_info_fresh(comfy_server)["UnHypeLoader"]["input"]["required"]["unhype_name"]
    assert net in choices[1]["options"]
    workflow = json.loads((WORKFLOWS / "sd15_unhype.json").read_text())
    api = to_api(workflow, object_info)
    by_type = {n["class_type"]: n for n in api.values()}
    by_type["CheckpointLoaderSimple"]["inputs"]["ckpt_name"] = ckpt
    by_type["UnHypeLoader"]["inputs"]["unhype_name"] = net
    by_type["EmptyLatentImage"]["inputs"].update(width=64, height=64)
    by_type["KSampler"]["inputs"]["steps"] = 2
    outputs = comfy_server.run(copy.deepcopy(api), budget=300)
    images = [o for o in outputs.values() if "images" in o]
    assert images and comfy_server.output_path(images[0]["images"][0]).is_file()
    texts = [o["text"][0] for o in outputs.values() if "text" in o]  # shown by web/unhype.js
    conditioners = [t for t in texts if "entry 1" in t]
    loader = [t for t in texts if t not in conditioners]
    assert len(conditioners) == 2 and len(loader) == 1 and "erases:" in loader[0]


def test_node_error_keeps_server_running(comfy_server, object_info, sd15_checkpoint, tmp_path):
    """A broken file in models/unhype is a node error with a message; the server goes on."""
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    name = comfy_server.add_model("unhype", bad)
    api = {"1": {"class_type": "UnHypeLoader", "inputs": {"unhype_name": name}},
           "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    if "PreviewAny" not in object_info:
        pytest.skip("no output node to pull the loader")
    with pytest.raises(ch.PromptError, match="UnHype Loader"):
        comfy_server.run(api, budget=60)
    assert comfy_server.object_info("UnHypeLoader")
