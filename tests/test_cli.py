"""The command line as a newcomer meets it: one clear line and exit status 2 for a wrong
argument or a headless error a user can fix, and no heavy import before the arguments are
known."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfy_host import run_watched
from unhype.fileformat import save_unhype
from unhype.hypernet import HyperNetConfig
from unhype.network import NetworkInfo, UnHypeNetwork
from unhype.targets import Target

REPO = Path(__file__).resolve().parent.parent
PREFIX = "python -m unhype train: "


def unhype(*args, cwd=REPO, budget=120):
    return run_watched([sys.executable, "-m", "unhype", *args], budget=budget, cwd=cwd)


def assert_one_line_error(result, *fragments):
    """Exit status 2 and one line on stderr, "python -m unhype train: ...", no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and lines, result.stderr
    error = lines[-1]
    assert error.startswith(PREFIX), result.stderr
    assert not any(line.startswith(PREFIX) for line in lines[:-1]), result.stderr
    for fragment in fragments:
        assert fragment in error, error
    return error


def train(tmp_path, **keys):
    """`python -m unhype train` on a TOML config of these keys (model, concepts by default)."""
    keys = {"model": "proving-ground", "concepts": ["red"], **keys}
    config = tmp_path / "cfg.toml"
    config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items()))
    return unhype("train", str(config), budget=600)


@pytest.mark.parametrize("args, message", [
    (["demo", "--steps", "-5"], "argument --steps: must be at least 0, got -5"),
    (["demo", "--steps", "abc"], "argument --steps: expected a whole number, got 'abc'"),
    (["demo", "--samples", "0"], "argument --samples: must be at least 1"),
    (["demo", "--cores", "0"], "argument --cores: must be at least 1"),
    (["demo", "--concept", "mauve"], "argument --concept: invalid choice: 'mauve'"),
    (["demo", "--objective", "esd"], "argument --objective: invalid choice: 'esd'"),
    (["demo", "--out", "/proc/forbidden"], "--out /proc/forbidden: cannot write there"),
    (["train", "missing.toml"], "missing.toml: no such config file"),
])
def test_wrong_arguments_fail_with_one_line(args, message):
    result = unhype(*args)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_config_fails_without_a_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('model = "x.safetensors"\nconcepts = ["zebra"]\nlearning_rate = 1e6\n')
    result = unhype("train", str(config))
    assert result.returncode == 2, result
    assert "learning_rate: must be between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["demo", "--steps", "x"],
                                  ["train", "missing.toml"]])
def test_help_and_argument_errors_load_no_torch(args):
    """What made every call take ~9 s: torch was imported before the arguments were parsed."""
    probe = ("import runpy, sys\n"
             f"sys.argv = ['unhype', *{args!r}]\n"
             "try:\n    runpy.run_module('unhype', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")
    result = run_watched([sys.executable, "-c", probe], budget=120, cwd=REPO)
    assert result.stderr.strip().endswith("no torch"), result.stderr


def test_invalid_settings_and_unknown_keys_are_one_line(tmp_path):
    error = assert_one_line_error(
        train(tmp_path, steps=-1, learning_rate=2.0, model="x.safetensors"),
        "invalid training settings: steps: must be between 0 and",
        "; learning_rate: must be between 0 and 1")
    assert "\n" not in error
    assert_one_line_error(train(tmp_path, stpes=5, rnak=2),
                          "unknown keys ['rnak', 'stpes']", "'stpes': did you mean 'steps'?",
                          "'rnak': did you mean 'rank'?")
    assert_one_line_error(train(tmp_path, concepts=[], model=""),
                          "missing required key 'model'; missing required key 'concepts'")


def small_network(path):
    config = HyperNetConfig(embed_dim=8, rank=2, hidden=4)
    save_unhype(str(path), UnHypeNetwork(config, [Target("block.attn2.to_k", 12, 8)],
                                         NetworkInfo("sd1", "sd-cross-kv")))


def damaged(path):
    """A real .safetensors file cut short, as an interrupted download leaves it."""
    save_file({"weight": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:5000])


MODEL_FILES = {
    "garbage": (lambda p: p.write_bytes(os.urandom(100)),
                "not a readable .safetensors file (Error while deserializing header"),
    "truncated": (damaged, "not a readable .safetensors file"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable .safetensors file"),
    "unhype network": (small_network, "is an UnHype network (what training writes), not a model"),
    "lora": (lambda p: save_file({"lora_unet_x.lora_up.weight": torch.zeros(4, 2),
                                  "lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(p)),
             "is a LoRA, not a model checkpoint"),
    "folder": (lambda p: p.mkdir(), "is a folder: give the checkpoint file in it"),
    "missing": (lambda p: None, "does not exist"),
}


@pytest.mark.parametrize("kind", MODEL_FILES)
def test_model_files_that_cannot_be_checkpoints_are_refused_in_one_line(tmp_path, kind):
    """Refused before ComfyUI is looked for: a ComfyUI that does not exist is never reached."""
    make, message = MODEL_FILES[kind]
    model = tmp_path / "model.safetensors"
    make(model)
    assert_one_line_error(train(tmp_path, model=str(model), comfyui_path=str(tmp_path / "no")),
                          f"model {model}", message)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="a file mode that denies reading does not stop root")
def test_an_unreadable_model_file_is_refused_in_one_line(tmp_path):
    model = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(model))
    model.chmod(0)
    assert_one_line_error(train(tmp_path, model=str(model)), "cannot read it (Permission denied)")


@pytest.mark.parametrize("key", ["output", "checkpoint_dir"])
def test_a_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path, key):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    assert_one_line_error(train(tmp_path, **{key: str(blocker / "out")}),
                          f"{key} {blocker / 'out'}: cannot write there (Not a directory); pick a "
                          "folder you can write to")


def test_missing_or_broken_comfyui_is_one_line(tmp_path):
    assert_one_line_error(train(tmp_path, comfyui_path=str(tmp_path / "none")),
                          "no ComfyUI checkout found (tried configured = ")
    broken = tmp_path / "ComfyUI"  # a checkout whose clone stopped half way: no comfy/options.py
    (broken / "comfy").mkdir(parents=True)
    (broken / "main.py").write_text("")
    (broken / "comfy" / "cli_args.py").write_text("")
    assert_one_line_error(train(tmp_path, comfyui_path=str(broken)),
                          f"the ComfyUI at {broken} cannot be imported by this Python",
                          "No module named 'comfy.options'", "requirements.txt")


# -- with the real ComfyUI: files only its loader can judge, a full disk, a diverging run --
FAST = {"steps": 2, "xt_cache_size": 1, "sampling_steps": 2, "retain_batch": 2,
        "checkpoint_every": 1}


@pytest.mark.host
@pytest.mark.slow
def test_files_comfyui_cannot_load_as_a_checkpoint_are_one_line(tmp_path, comfyui_path):
    unknown = tmp_path / "vae.safetensors"  # valid safetensors, no model ComfyUI knows
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3)}, str(unknown))
    # not safetensors: ComfyUI tries torch.load(weights_only); random bytes, and random bytes
    # after a pickle header, fail in different places of the unpickler
    junk = tmp_path / "model.ckpt"
    junk.write_bytes(os.urandom(3000))
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(b"\x80\x02" + os.urandom(3000))
    refused = "not a .safetensors file, and torch.load(weights_only=True)"
    for model, message in ((unknown, "ComfyUI recognises no diffusion model in it"),
                           (junk, refused), (pickled, refused)):
        result = train(tmp_path, model=str(model), comfyui_path=str(comfyui_path))
        assert_one_line_error(result, f"model {model}: {message}", "give a model checkpoint")


def _full_disk_command(folder: Path, command: list[str]) -> tuple[list[str], dict, str]:
    """`command` with `folder` on a 64 KiB tmpfs (a user and mount namespace), where writes end
    in "No space left on device"; without namespaces, a 64 KiB file size limit instead."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs "
                            f"'{folder}'"], capture_output=True)
    if probe.returncode == 0:
        script = (f'mount -t tmpfs -o size=64k tmpfs "{folder}" && "$@"; status=$?; '
                  f'ls -AR "{folder}"; exit $status')
        return ["unshare", "-rm", "sh", "-c", script, "sh", *command], {}, \
            "No space left on device"
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    return command, {"preexec_fn": limit}, "File too large"


@pytest.mark.host
@pytest.mark.slow
def test_a_full_disk_during_training_is_one_line_and_leaves_no_partial_file(tmp_path,
                                                                          comfyui_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    config = tmp_path / "cfg.toml"
    keys = {"model": "proving-ground", "concepts": ["red"], "comfyui_path": str(comfyui_path),
            "output": str(folder / "out"), "checkpoint_dir": str(folder / "ckpt"), **FAST}
    config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items()))
    command, options, reason = _full_disk_command(
        folder, [sys.executable, "-m", "unhype", "train", str(config)])
    result = run_watched(command, budget=600, cwd=REPO, **options)
    assert_one_line_error(result, f"cannot write {folder / 'ckpt' / 'unhype.safetensors'}: "
                          f"{reason}", "make room there, or set output and checkpoint_dir")
    # what is left on that disk (listed inside the namespace, or seen here): no half file
    left = result.stdout if not options else "".join(map(str, folder.rglob("*")))
    assert ".partial-write" not in left, left


@pytest.mark.host
@pytest.mark.slow
def test_a_diverging_run_is_one_line(tmp_path, comfyui_path):
    result = train(tmp_path, comfyui_path=str(comfyui_path), learning_rate=1.0,
                   output=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"),
                   **{**FAST, "steps": 20, "checkpoint_every": 100})
    assert_one_line_error(result, "training diverged: ", "Lower the learning rate (now 1)")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
