"""The worker process of tests/test_distributed.py: a module of its own, so that processes
started by torch.multiprocessing can import it by name, and a script torchrun can start."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# the child starts with the parent's sys.path, from which the host harness removes the repo root
sys.path.append(str(Path(__file__).resolve().parent.parent))

from test_training import make_trainer  # noqa: E402


def train(rank, world, store, settings, checkpoint, resume, out):
    torch.set_num_threads(1)
    # gloo's default timeout (30 min) is a hang guard only: a collective waits for one step of
    # the other process, seconds even on a busy machine
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        trainer = make_trainer(group=dist.group.WORLD, **settings)
        if resume:
            trainer.load_checkpoint(checkpoint)
        trainer.run(checkpoint)
        if rank == 0:
            torch.save({k: v.clone() for k, v in trainer.module.state_dict().items()}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # torchrun ... _distributed_worker.py SETTINGS_JSON CHECKPOINT PID_FOLDER: trains, checkpointing
    # as it goes, after writing this process's pid to PID_FOLDER/rank<N> for a test to kill it.
    settings, checkpoint, pid_folder = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    Path(pid_folder, f"rank{dist.get_rank()}").write_text(str(os.getpid()))
    make_trainer(group=dist.group.WORLD, **settings).run(checkpoint)
