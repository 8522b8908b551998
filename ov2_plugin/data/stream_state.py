"""Where each rank's data stream stands, saved in every checkpoint and read back on resume.

The Trainer resumes a stream by running it again from the start and dropping the batches it
already trained on (``skip_first_batches``): every skipped image is read, decoded, augmented
and collated, so resume time grows with the samples seen. Our streams instead attach their
position to every sample (``StreamingCaptions``: block, unit, offset, bad-sample counts); the
collator keeps the last one of each batch, the Trainer remembers the newest per loader worker,
and ``stream_state_rank{R}.json`` in the checkpoint holds them. On resume each worker starts at
its own position and the Trainer's skipping is switched off (``ignore_data_skip``).

Why not torchdata's ``StatefulDataLoader``: it is not part of this stack, and the HF Trainer
does not save or restore a dataloader's ``state_dict`` in its checkpoints (only accelerate's
``save_state`` does, which the Trainer's checkpointing does not use), so we would still need
both hooks below; the per-worker state would be the same numbers.

File layout: ``{"format": 1, "world_size", "rank", "num_workers", "epoch", "next_worker",
"workers": {"<worker>": position}}``; ``next_worker`` is the worker whose batch comes next
(the DataLoader takes batches from its workers in turn).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FORMAT = 1
STATE_KEY = "stream_state"


def state_file(checkpoint: str | os.PathLike, rank: int) -> Path:
    return Path(checkpoint) / f"stream_state_rank{rank}.json"


class StreamTracker:
    """The newest position per loader worker, from the batches the Trainer consumed."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = max(1, num_workers)
        self.workers: dict[str, dict] = {}
        self.epoch: int | None = None
        self.next_worker = 0

    def update(self, position: dict) -> None:
        if position["epoch"] != self.epoch:  # a new epoch starts every worker afresh
            self.workers, self.epoch = {}, position["epoch"]
        self.workers[str(position["worker"])] = position
        self.next_worker = (position["worker"] + 1) % self.num_workers

    def restore(self, state: dict) -> None:
        self.workers, self.epoch, self.next_worker = dict(state["workers"]), state["epoch"], state["next_worker"]

    def save(self, checkpoint: str | os.PathLike, rank: int, world_size: int) -> None:
        if self.epoch is None:
            return
        data = {"format": FORMAT, "world_size": world_size, "rank": rank, "num_workers": self.num_workers,
                "epoch": self.epoch, "next_worker": self.next_worker, "workers": self.workers}
        path = state_file(checkpoint, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))  # inside the staging folder: the checkpoint appears whole or not at all


def write_final_counts(tracker: StreamTracker, dataset, rank: int) -> None:
    """At the end of training, the bad-sample counts up to the last batch trained, per worker.

    A stream writes its counts file at its end, at each bad sample and every 500 good ones; when
    training stops inside an epoch, the file can lag the samples trained. The positions the
    Trainer kept hold the counts as of each worker's last consumed batch: written where the file
    holds fewer (a file that holds more was written later by the stream itself, e.g. at its end).
    """
    from .bad_samples import BadSampleCounter

    report_dir = getattr(dataset, "report_dir", None)
    if not report_dir or tracker.epoch is None:
        return
    for worker, position in tracker.workers.items():
        counter = BadSampleCounter(report_dir, f"epoch{position['epoch']}-rank{rank}-worker{worker}")
        saved = json.loads(counter.path.read_text()) if counter.path.is_file() else {"good": 0, "counts": {}}
        total = position["counter"]["good"] + sum(position["counter"]["counts"].values())
        if saved["good"] + sum(saved["counts"].values()) < total:
            counter.load_state(position["counter"])  # writes the file


def read_stream_state(checkpoint: str | os.PathLike, rank: int, world_size: int, num_workers: int) -> dict | None:
    """This rank's saved positions, or None when the checkpoint has none (then the Trainer's skipping applies).

    A different number of processes or loader workers is refused: the split of units and the
    positions are per (rank, worker), so another layout cannot continue them exactly.
    """
    files = sorted(Path(checkpoint).glob("stream_state_rank*.json"))
    if not files:
        return None
    state = json.loads(state_file(checkpoint, rank).read_text()) if state_file(checkpoint, rank).is_file() else None
    saved = json.loads(files[0].read_text())
    if state is None or saved["world_size"] != world_size or saved["num_workers"] != max(1, num_workers):
        raise ValueError(
            f"{checkpoint} holds the data stream positions of {saved['world_size']} process(es) x "
            f"{saved['num_workers']} loader worker(s); this run has {world_size} x {max(1, num_workers)}. Resume with "
            "the same number of processes and --dataloader_num_workers (a position is per rank and worker), or start "
            "a new run from these weights with --init_from."
        )
    return state
