"""The pack entry point outside ComfyUI: importing it must not crash (no folder_paths / comfy), and
it never exports NODE_CLASS_MAPPINGS (ComfyUI would then load it as V1 and drop the V3 nodes)."""

import json
import sys
from pathlib import Path

from comfy_host import run_watched

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = f"""
import importlib.util, json, sys
sys.path[:] = [p for p in sys.path if 'ComfyUI' not in p and p not in ('', {str(ROOT)!r})]
spec = importlib.util.spec_from_file_location(
    "standalone_pack", {str(ROOT / '__init__.py')!r}, submodule_search_locations=[{str(ROOT)!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["standalone_pack"] = module
spec.loader.exec_module(module)
print(json.dumps({{"exports": sorted(n for n in vars(module) if n.isupper() or "entry" in n),
                  "web": module.WEB_DIRECTORY, "comfy": "comfy" in sys.modules}}))
"""


def test_pack_imports_without_comfyui():
    out = run_watched([sys.executable, "-c", SCRIPT], budget=120, cwd="/")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"exports": ["HOST_MODULES", "WEB_DIRECTORY"], "web": "./web", "comfy": False}


def test_web_extension_is_registered_by_name():
    source = (ROOT / "web" / "unhype.js").read_text()
    assert 'name: "unhype.report"' in source and "onExecuted" in source
