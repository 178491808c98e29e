"""Convert a ComfyUI UI-format (LiteGraph) workflow to the API format /prompt takes, and check a
UI workflow against /object_info. Written for the pack's tests; handles what our workflows use
(plain nodes, links, Note nodes), not groups/subgraphs/reroutes."""

VIRTUAL = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# combos listing files of a model folder: any name is valid in a workflow shipped to users
FILE_INPUTS = {"ckpt_name", "unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name",
               "unhype_name", "lora_name", "control_net_name"}


def _specs(info):
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
    return specs, order


def is_widget(spec) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def has_control_value(name, spec) -> bool:
    """The frontend stores an extra "control_after_generate" value after seed widgets."""
    options = spec[1] if len(spec) > 1 else {}
    return bool(options.get("control_after_generate")) or name in ("seed", "noise_seed")


def widget_values(node, info) -> dict:
    """{input name: value} for the node's widgets, in /object_info's input order."""
    specs, order = _specs(info)
    values, queue = {}, list(node.get("widgets_values") or [])
    for name in order:
        if not is_widget(specs[name]):
            continue
        if not queue:
            break
        values[name] = queue.pop(0)
        if has_control_value(name, specs[name]) and queue and queue[0] in (
            "fixed", "increment", "decrement", "randomize"
        ):
            queue.pop(0)
    return values


def to_api(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL or node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        info = object_info[node["type"]]
        inputs = widget_values(node, info)
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, origin, origin_slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(origin), origin_slot]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title", node["type"])}}
    return api


def validate(workflow: dict, object_info: dict) -> list[str]:
    """Problems of a UI workflow against /object_info (empty list: valid)."""
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL:
            continue
        info = object_info.get(node["type"])
        if info is None:
            problems.append(f"node {node['id']}: unknown node type {node['type']}")
            continue
        specs, order = _specs(info)
        required = info["input"].get("required", {})
        connected = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
        for name in order:
            if name in required and not is_widget(specs[name]) and name not in connected:
                problems.append(f"node {node['id']} ({node['type']}): input {name} unconnected")
        for name, value in widget_values(node, info).items():
            kind = specs[name][0]
            options = specs[name][1] if len(specs[name]) > 1 else {}
            if isinstance(kind, list) or kind == "COMBO":
                choices = kind if isinstance(kind, list) else options.get("options", [])
                if name in FILE_INPUTS:
                    if not (isinstance(value, str) and value.endswith(".safetensors")):
                        problems.append(f"node {node['id']}: {name}={value!r} is not a file name")
                elif value not in choices:
                    problems.append(f"node {node['id']}: {name}={value!r} not in {choices}")
            elif kind in ("INT", "FLOAT"):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if kind == "INT":
                    ok = ok and float(value).is_integer()
                if not ok or value < options.get("min", value) or value > options.get("max", value):
                    problems.append(
                        f"node {node['id']}: {name}={value!r} invalid for {kind} {options}")
            elif kind == "STRING" and not isinstance(value, str):
                problems.append(f"node {node['id']}: {name}={value!r} is not a string")
            elif kind == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"node {node['id']}: {name}={value!r} is not a boolean")
        widgets = [n for n in order if is_widget(specs[n])]
        expected = len(widgets) + sum(has_control_value(n, specs[n]) for n in widgets)
        if len(node.get("widgets_values") or []) != expected:
            count = len(node.get("widgets_values") or [])
            problems.append(f"node {node['id']} ({node['type']}): {count} "
                            f"widget values, /object_info implies {expected}")
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        out_types = object_info[nodes[origin]["type"]]["output"]
        if origin_slot >= len(out_types) or out_types[origin_slot] != kind:
            problems.append(f"link {link_id}: output {origin_slot} of {nodes[origin]['type']} "
                            f"is not {kind}")
        sockets = nodes[target].get("inputs", [])
        socket = sockets[target_slot] if target_slot < len(sockets) else None
        if socket is None or socket.get("link") != link_id:
            problems.append(f"link {link_id}: target slot {target_slot} of node {target} "
                            "does not point back to it")
            continue
        specs, _ = _specs(object_info[nodes[target]["type"]])
        expected = specs.get(socket["name"], [None])[0]
        if expected != kind and expected != "*":
            problems.append(f"link {link_id}: {kind} into {nodes[target]['type']}.{socket['name']} "
                            f"which takes {expected}")
        origin_out = nodes[origin]["outputs"][origin_slot]
        if link_id not in (origin_out.get("links") or []):
            problems.append(f"link {link_id}: not listed on output {origin_slot} of node {origin}")
    return problems
