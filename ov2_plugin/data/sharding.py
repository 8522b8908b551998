"""Which shards (or records) a rank's DataLoader worker reads, in which order.

Rules that make a streamed epoch exact: the list is permuted with a seed that depends only
on ``(seed, epoch)``, so every rank computes the same permutation; rank ``r`` of ``W`` then
takes every ``W``-th item from ``r``, and worker ``w`` of ``K`` every ``K``-th of those. Each
item is read by exactly one (rank, worker) per epoch, and the order is a function of the
seed, the epoch, the world size and the number of workers alone. webdataset's own
``split_by_node`` reads the rank from the process group, which DataLoader workers do not
have, so the rank is passed in explicitly instead.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Brace patterns (``data/{00000..00099}.tar``), several joined by ``::``, or a list; local paths or URLs."""
    import braceexpand  # comes with webdataset (the ``data`` extra); only shard lists need it

    patterns = spec.split("::") if isinstance(spec, str) else list(spec)
    urls = [url for p in patterns if p.strip() for url in braceexpand.braceexpand(p.strip())]
    if not urls:
        raise ValueError(f"No shards in {spec!r}; give a path, a URL or a brace pattern like 'shards/{{00000..00009}}.tar'.")
    return urls


def distributed_rank_and_world() -> tuple[int, int]:
    """The process's rank and world size: the process group's, else torchrun's environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_id_and_count() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def epoch_permutation(items: Sequence[T], seed: int, epoch: int) -> Sequence[T]:
    """The same permutation on every rank for a given ``(seed, epoch)``.

    A ``range`` (the record indices of a big file) is permuted as a numpy array: 8 bytes an
    item instead of a list of Python ints (~36), in every loader worker.
    """
    if isinstance(items, range):
        digest = hashlib.sha256(f"ov2-records/{seed}/{epoch}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(np.asarray(items, np.int64))
    order = list(items)
    random.Random(f"ov2-shards/{seed}/{epoch}").shuffle(order)
    return order


def split_for(items: Sequence[T], rank: int, world_size: int, worker: int, num_workers: int) -> Sequence[T]:
    """The items that (rank, worker) reads: a disjoint, exhaustive split across all pairs."""
    items = items if isinstance(items, range | np.ndarray) else list(items)
    return items[rank::world_size][worker::num_workers]
