"""Data-parallel training (torch.distributed, gloo on CPU): N processes give the network that
one process gives with the same global batch, and a checkpoint resumes with another N."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _distributed_worker
from comfy_host import Watch, communicate_watched, run_watched
from test_training import make_trainer

DRAWS = 4
# Float sums taken in another order (an all-reduce of per-process partial sums instead of one
# sum), then Adam steps: measured 6.3e-7 after 10 steps, 6.7e-7 after 20; another batch: >1e-3.
TOLERANCE = 1e-5
# Through ComfyUI on the proving ground, after 6 steps (lr 1e-3 moves a weight by ~1e-3 a step):
# measured 4.7e-6 on one machine and 1.5e-4 on another with the same code (its CPU's float sums
# drift further); another global batch moves weights by more than 1e-3.
HEADLESS_TOLERANCE = 5e-4


def run_processes(tmp_path, world, steps, checkpoint, resume=False):
    store, out = tmp_path / f"store-{world}-{steps}", tmp_path / f"net-{world}-{steps}.pt"
    settings = dict(steps=steps, removal_draws=DRAWS, xt_cache_size=4)
    mp.spawn(_distributed_worker.train,
             args=(world, str(store), settings, str(checkpoint), resume, str(out)),
             nprocs=world, join=True)
    return torch.load(out)


def max_difference(left, right):
    return max(float((left[k] - right[k]).abs().max()) for k in left)


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_with_one(tmp_path):
    """Two processes train steps 1..10; one process with the same global batch gives the same
    network; the two processes' checkpoint resumes in one process to the same step-20 network
    as one process training straight through."""
    checkpoint = tmp_path / "pair.ckpt.safetensors"
    pair = run_processes(tmp_path, 2, 10, checkpoint)
    single = make_trainer(steps=10, removal_draws=DRAWS, xt_cache_size=4)
    single.run()
    difference = max_difference(single.module.state_dict(), pair)
    print(f"two processes vs one, 10 steps: max abs weight difference {difference:.2e}")
    assert difference <= TOLERANCE
    other_batch = make_trainer(steps=10, xt_cache_size=4)
    other_batch.run()
    assert max_difference(single.module.state_dict(), other_batch.module.state_dict()) > 1e-3

    resumed = make_trainer(steps=20, removal_draws=DRAWS, xt_cache_size=4)
    resumed.load_checkpoint(str(checkpoint))
    assert resumed.step == 10
    resumed.run()
    straight = make_trainer(steps=20, removal_draws=DRAWS, xt_cache_size=4)
    straight.run()
    difference = max_difference(straight.module.state_dict(), resumed.module.state_dict())
    print(f"resumed in one process vs straight, 20 steps: max abs difference {difference:.2e}")
    assert difference <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1], ids=["writer", "other"])
def test_killing_one_process_loses_nothing_the_last_checkpoint_held(tmp_path, victim):
    """torchrun with 2 processes; once a checkpoint exists, one process (process 0, which
    writes, or the other) is killed with SIGKILL. torchrun stops the rest; the checkpoint on
    disk loads and, resumed in one process, trains to the network an uninterrupted single
    process gives."""
    settings = dict(steps=10**6, removal_draws=DRAWS, xt_cache_size=4, checkpoint_every=5)
    checkpoint, pids = tmp_path / "run.ckpt.safetensors", tmp_path / "pids"
    pids.mkdir()
    worker = Path(__file__).with_name("_distributed_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), str(worker), json.dumps(settings), str(checkpoint),
         str(pids)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        watch = Watch(launcher.pid, 300, "torchrun before its first checkpoint")
        while not checkpoint.exists() or len(list(pids.iterdir())) < 2:
            assert launcher.poll() is None, launcher.communicate()[0][-3000:]
            watch.check()
            time.sleep(0.02)
        os.kill(int((pids / f"rank{victim}").read_text()), signal.SIGKILL)
        output = communicate_watched(launcher, 300, "torchrun stopping the rest")[0]
    finally:
        launcher.kill()
    assert launcher.returncode != 0, output[-3000:]
    leftovers = sorted(p.name for p in tmp_path.iterdir()
                       if p.name not in ("pids", checkpoint.name))
    trainers = {name: make_trainer(steps=10**6, removal_draws=DRAWS, xt_cache_size=4,
                                   checkpoint_every=5) for name in ("resumed", "straight")}
    trainers["resumed"].load_checkpoint(str(checkpoint))
    saved = trainers["resumed"].step
    assert saved > 0 and saved % 5 == 0
    for trainer in trainers.values():
        trainer.config.steps = saved + 5  # read by the loop alone
        trainer.run()
    resumed, straight = trainers["resumed"], trainers["straight"]
    difference = max_difference(straight.module.state_dict(), resumed.module.state_dict())
    print(f"killed process {victim} after step >= {saved}; resumed in one process vs straight, "
          f"{saved + 5} steps: max abs difference {difference:.2e}; left beside the checkpoint: "
          f"{leftovers}")
    assert difference <= TOLERANCE
    assert not leftovers, leftovers


def test_draws_must_split_evenly(monkeypatch):
    monkeypatch.setattr(dist, "get_rank", lambda group: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda group: 2)
    with pytest.raises(ValueError, match=r"removal_draws \(3\) must be a multiple of the "
                                         r"number of processes \(2\)"):
        make_trainer(removal_draws=3, group=object())


def _headless_config(tmp_path, name, comfyui_path):
    config = tmp_path / f"{name}.toml"
    config.write_text(textwrap.dedent(f"""
        model = "proving-ground"
        comfyui_path = "{comfyui_path}"
        output = "{tmp_path / name}"
        checkpoint_dir = "{tmp_path / name / 'ckpt'}"
        device = "cpu"
        concepts = ["red"]
        preset = "custom"
        templates = ["a photo of a {{}} circle", "a {{}} square"]
        retain_prompts = ["a photo of a blue circle", "a green square"]
        builtin_retain = false
        steps = 6
        removal_draws = 2
        retain_batch = 2
        xt_cache_size = 2
        save_name = "{name}"
    """))
    return config


@pytest.mark.host
@pytest.mark.slow
def test_torchrun_runs_the_headless_trainer_data_parallel(comfyui_path, tmp_path):
    """`torchrun --nproc_per_node 2 -m unhype train` on the proving ground (gloo, CPU) writes the
    network that `python -m unhype train` writes with the same global batch."""
    import unhype  # the core, through conftest's finder

    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    root = Path(__file__).resolve().parent.parent
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(_free_port())]
    runs = {"pair": [*torchrun, "-m", "unhype", "train"],
            "single": [sys.executable, "-m", "unhype", "train"]}
    networks = {}
    for name, command in runs.items():
        config = _headless_config(tmp_path, name, comfyui_path)
        proc = run_watched([*command, str(config)], budget=600, cwd=root, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.stdout.count("step 6/6") == 1, proc.stdout  # process 0 alone prints
        networks[name] = unhype.load_unhype(str(tmp_path / name / f"{name}.safetensors"))
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
            "ckpt", f"{name}.loss.png", f"{name}.md", f"{name}.safetensors"]  # .md: the card
    assert networks["pair"].info.base_arch == "proving-ground"
    difference = max_difference(networks["single"].module.state_dict(),
                                networks["pair"].module.state_dict())
    print(f"torchrun 2 processes vs 1, 6 steps: max abs weight difference {difference:.2e}")
    assert difference <= HEADLESS_TOLERANCE


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
