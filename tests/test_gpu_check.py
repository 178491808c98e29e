"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's every code path (sampling with Apply
Dynamic LoRA and hook LoRA, UnHype and ESD-x training steps with and without checkpointing) on
tiny models of each family, in a separate process as it would run on a GPU machine."""

import os
import sys
from pathlib import Path

import pytest

from comfy_host import run_watched

pytestmark = pytest.mark.host

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_smoke(comfyui_path):
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_path)}
    result = run_watched([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                          "--cpu-smoke"], budget=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = result.stdout.split("==== report ====")[-1]
    for section in ("sampling sd15", "sampling sdxl", "training sd15", "training sdxl",
                    "training flux", "sampling zimage", "training zimage"):
        assert f"\n{section}:" in report, report
    assert report.count("unhype / esd-x, checkpointing") == 8  # sd15, sdxl, flux, zimage
    assert not any(word in report for word in ("NO UPDATE", "out of memory", "failed:"))
    sampling = report.split("sampling sd15:")[1].split("training sd15:")[0]
    counted = {line.split()[0]: float(line.split()[-1]) for line in sampling.splitlines()
               if line.strip().startswith(("base ", "unhype-1 "))}
    assert counted["unhype-1"] > counted["base"] > 0  # the hypernetwork is counted by ComfyUI
