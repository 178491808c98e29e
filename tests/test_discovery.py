"""One ComfyUI discovery (unhype/discovery.py) for the tests, the headless trainer and .ci/."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import comfy_host
from unhype import discovery, headless

REPO = Path(__file__).resolve().parent.parent


def fake_comfyui(path: Path, version: str = "9.9.9") -> Path:
    (path / "comfy").mkdir(parents=True)
    (path / "main.py").write_text("")
    (path / "comfy" / "cli_args.py").write_text("")
    (path / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home and no $COMFYUI_PATH: nothing is found unless a test puts it there."""
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "home")
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    return tmp_path / "home"


def test_search_order(home, tmp_path, monkeypatch):
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "comfyui-unhype"
    pack.mkdir(parents=True)
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "env"))
    assert [path for _, path in discovery.candidates(pack)] == [
        tmp_path / "env", tmp_path / "ComfyUI", home / ".cache" / "comfyui" / "ComfyUI",
        pack.parent / "ComfyUI", home / ".cache" / "comfyui" / f"ComfyUI-{discovery.FLOOR_VERSION}"]
    outside = tmp_path / "src" / "comfyui-unhype"
    assert tmp_path / "ComfyUI" not in [path for _, path in discovery.candidates(outside)]


def test_the_comfyui_a_clone_sits_in_wins_over_the_cache(home, tmp_path):
    enclosing = fake_comfyui(tmp_path / "ComfyUI", "0.33.0")
    fake_comfyui(home / ".cache" / "comfyui" / "ComfyUI")
    pack = enclosing / "custom_nodes" / "comfyui-unhype"
    pack.mkdir(parents=True)
    assert discovery.find(pack_root=pack) == enclosing.resolve()
    assert discovery.version(enclosing) == "0.33.0"


def test_the_floor_is_the_last_resort_and_a_second_host(home, tmp_path):
    floor = fake_comfyui(discovery.floor_dir(), discovery.FLOOR_VERSION)
    pack = tmp_path / "src" / "comfyui-unhype"
    assert discovery.hosts(pack) == [floor.resolve()]
    newest = fake_comfyui(home / ".cache" / "comfyui" / "ComfyUI", "0.33.0")
    assert discovery.hosts(pack) == [newest.resolve(), floor.resolve()]


def test_nothing_found_says_where_it_looked_and_how_to_get_one(home):
    with pytest.raises(discovery.ComfyUINotFound) as caught:
        discovery.find()
    assert str(home / ".cache" / "comfyui" / "ComfyUI") in str(caught.value)
    assert ".ci/setup" in str(caught.value)
    assert comfy_host.find_comfyui()[0] is None
    with pytest.raises(headless.ConfigError, match="comfyui_path"):
        headless.find_comfyui()


def test_a_configured_path_is_the_only_one_tried(home, tmp_path):
    fake_comfyui(home / ".cache" / "comfyui" / "ComfyUI")
    with pytest.raises(discovery.ComfyUINotFound, match="configured"):
        discovery.find(tmp_path / "elsewhere")
    assert headless.find_comfyui(str(fake_comfyui(tmp_path / "mine"))) == (tmp_path / "mine")


def test_version_without_comfyui_version_py(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "ComfyUI"\nversion = "0.3.10"\n')
    assert discovery.version(tmp_path) == "0.3.10"
    assert discovery.version(tmp_path / "missing") == "unknown"


def shell(command: str, home: Path, **env) -> subprocess.CompletedProcess:
    """`command` after sourcing .ci/common.sh, with this Python as the venv's."""
    venv = home / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        (venv / "bin" / "python").symlink_to(sys.executable)
    environment = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    environment.update(HOME=str(home), UNHYPE_VENV=str(venv), **env)
    return comfy_host.run_watched(["bash", "-c", f"source .ci/common.sh && {command}"],
                                  budget=60, cwd=REPO, env=environment)


def test_the_shell_asks_the_same_module(tmp_path):
    home = tmp_path / "home"
    floor = fake_comfyui(home / ".cache" / "comfyui" / f"ComfyUI-{discovery.FLOOR_VERSION}",
                         discovery.FLOOR_VERSION)
    newest = fake_comfyui(tmp_path / "newest", "0.33.0")
    got = shell("discover --hosts", home, COMFYUI_PATH=str(newest))
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [f"0.33.0\t{newest.resolve()}",
                                       f"{discovery.FLOOR_VERSION}\t{floor.resolve()}"]
    floor_line = shell("discover --floor", home).stdout.rstrip("\n").split("\t")
    assert floor_line == [discovery.FLOOR_VERSION, str(floor), discovery.FLOOR_SDIST,
                          discovery.FLOOR_SDIST_SHA256, discovery.FLOOR_SDIST_MEMBER]
    nothing = shell("discover", tmp_path / "empty")
    assert nothing.returncode == 1 and "no ComfyUI checkout found" in nothing.stdout

