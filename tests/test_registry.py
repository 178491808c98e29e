"""What the Comfy Registry and ComfyUI's browsers read: pyproject metadata, the package
`.comfyignore` leaves, the ruff rules `comfy node validate` runs, template thumbnails."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unhype import discovery

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_registry_metadata(pyproject):
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()  # the registry asks for that
    assert comfy["requires-comfyui"] == f">={discovery.FLOOR_VERSION}"
    assert "Operating System :: OS Independent" in project["classifiers"]
    assert any(c.startswith("Environment :: GPU ::") for c in project["classifiers"])
    # the Icon URL names a file of this repository
    icon = comfy["Icon"].split("/main/", 1)[1]
    assert comfy["Icon"].startswith(project["urls"]["Repository"].replace(
        "github.com", "raw.githubusercontent.com")) and (REPO / icon).is_file()


def git_files(*args: str) -> set[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-c", "-o", *args],
                         capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def test_comfyignore_ships_the_pack_and_its_weights_only():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    files = git_files("--exclude-standard")  # tracked, and untracked that git would track
    shipped = files - git_files("-i", "--exclude-from=.comfyignore")
    assert {"__init__.py", "pyproject.toml", "LICENSE", "README.md", "requirements.txt",
            "web/unhype.js", "unhype/world/weights/tiny_unet.safetensors",
            "unhype/world/weights/tiny_clip.safetensors"} <= shipped
    benchmark_only = "unhype/world/weights-identities/"
    assert {f for f in files if f.startswith(("nodes/", "unhype/", "web/", "workflows/"))
            and not f.endswith(".pyc") and not f.startswith(benchmark_only)} <= shipped
    assert not [f for f in shipped
                if f.startswith(("tests/", "benchmarks/", ".ci/", benchmark_only))]


def test_comfy_node_validate_ruff_rules():
    """`comfy node validate` refuses exec (S102), eval (S307) and `a; b` (E702)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select",
                             "S102,S307,E702", str(REPO)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_template_has_a_thumbnail():
    """ComfyUI's template browser shows workflows/<name>.jpg beside workflows/<name>.json."""
    from PIL import Image

    for path in sorted((REPO / "workflows").glob("*.json")):
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{path.name}: no thumbnail {thumbnail.name}"
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and min(image.size) >= 200, thumbnail.name
