"""UnHype for ComfyUI: per-prompt dynamic LoRA concept erasure (entry point of the node pack)."""

WEB_DIRECTORY = "./web"

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as error:  # outside ComfyUI (no folder_paths / comfy): export nothing
    if getattr(error, "name", None) not in ("folder_paths", "comfy", "node_helpers") and not (
        getattr(error, "name", "") or ""
    ).startswith("comfy."):
        raise
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
