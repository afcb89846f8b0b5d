"""Extraction spread over processes started by ``torchrun`` or ``accelerate launch`` (one per GPU, on
one node or several).

Each launcher sets WORLD_SIZE, RANK and LOCAL_RANK. With more than one process, every rank extracts its
share of the cache chunks (chunk n belongs to rank n mod WORLD_SIZE) into the shared, content-addressed
cache, the ranks wait for each other (a torch.distributed barrier: gloo on the CPU, nccl on CUDA), and
rank 0 alone probes and reports. A chunk is computed exactly as a single process computes it (same rows,
same batches), so the vectors, hence the results, are the same.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    """This process's place among the launched ones; ``Ranks()`` is a single process."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, chunk: int) -> bool:
        """Whether this rank extracts cache chunk number ``chunk``."""
        return chunk % self.world == self.rank

    def wait(self) -> None:
        """Block until every rank gets here (nothing to wait for in a single process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def launched_ranks(environ=os.environ) -> Ranks:
    """The ranks a launcher's environment variables describe, or a single process; a malformed variable
    is an error naming it."""
    if "WORLD_SIZE" not in environ:
        return Ranks()
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        text = environ.get(name, "0")
        if not text.isdigit():
            raise ValueError(f"environment variable {name}={text!r} is not a whole number (set by torchrun)")
        values[name] = int(text)
    ranks = Ranks(values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"])
    if ranks.world < 1 or ranks.rank >= ranks.world:
        raise ValueError(f"environment variables RANK={ranks.rank} and WORLD_SIZE={ranks.world} do not fit")
    return ranks


def rank_device(device, ranks: Ranks):
    """One GPU per process on a node: ``cuda`` becomes ``cuda:LOCAL_RANK``; any other device is kept."""
    import torch

    if ranks.world > 1 and device.type == "cuda" and device.index in (None, 0):
        count = torch.cuda.device_count()
        if ranks.local_rank >= count:
            raise ValueError(
                f"device: process LOCAL_RANK={ranks.local_rank} needs cuda:{ranks.local_rank}, but this node "
                f"has {count} CUDA device(s); start at most {count} processes per node"
            )
        return torch.device("cuda", ranks.local_rank)
    return device


@contextmanager
def process_group(ranks: Ranks, device):
    """The launched processes joined in one group for the run (gloo on the CPU, nccl on CUDA), left at the
    end; a single process joins nothing."""
    if ranks.world == 1:
        yield ranks
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()
