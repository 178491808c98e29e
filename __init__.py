"""UnHype for ComfyUI: per-prompt dynamic LoRA concept erasure (entry point of the node pack).

ComfyUI loads a pack as V1 when it exports NODE_CLASS_MAPPINGS (even an empty one) and then never
calls comfy_entrypoint, so this module exports only comfy_entrypoint and WEB_DIRECTORY. Outside
ComfyUI (no comfy_api, folder_paths, comfy) it exports WEB_DIRECTORY alone and the host-free core
`unhype/` stays importable.
"""

WEB_DIRECTORY = "./web"

HOST_MODULES = ("comfy", "comfy_api", "folder_paths", "node_helpers")

try:
    from comfy_api.latest import ComfyExtension

    from .nodes import NODES
except ImportError as error:
    if (getattr(error, "name", None) or "").split(".")[0] not in HOST_MODULES:
        raise
else:

    class UnHypeExtension(ComfyExtension):
        async def get_node_list(self):
            return list(NODES)

    async def comfy_entrypoint() -> UnHypeExtension:
        return UnHypeExtension()
