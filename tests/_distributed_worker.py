"""The worker process of tests/test_distributed.py: a module of its own, so that processes
started by torch.multiprocessing can import it by name."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

# the child starts with the parent's sys.path, from which the host harness removes the repo root
sys.path.append(str(Path(__file__).resolve().parent.parent))

from test_training import make_trainer  # noqa: E402


def train(rank, world, store, settings, checkpoint, resume, out):
    torch.set_num_threads(1)
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
