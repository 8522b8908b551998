"""Counting the samples a stream had to skip, per reason, and stopping when most data is broken.

Web-scale image-text data always holds some broken samples (truncated downloads, HTML saved
as ``.jpg``, empty captions). A run should skip them, say how many and why at the end, and
refuse to go on when the share is so high that the data itself is wrong. Counting happens in
DataLoader worker processes, which share no memory with the trainer, so each stream writes
its counts to a small JSON file under the run's folder; the trainer sums the files at the end.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from ..atomic_json import write_json_atomically

# The reasons a sample is skipped. ``truncated_tar`` counts shards that ended early (their
# samples before the damage are kept); the others count samples.
CORRUPT_IMAGE = "corrupt_image"  # not decodable: garbage bytes, a truncated file, HTML saved as .jpg
UNREADABLE_FILE = "unreadable_file"  # a missing image file or shard, or a sample without an image member
MISSING_CAPTION = "missing_caption"  # no caption, or only whitespace
UNPARSABLE_RECORD = "unparsable_record"  # a JSONL line that is not JSON
NOT_A_RECORD = "not_a_record"  # JSON, but not an object (a list, a string, a number)
MISSING_IMAGE = "missing_image"  # a record that names no image
TRUNCATED_TAR = "truncated_tar"
SAMPLE_REASONS = (CORRUPT_IMAGE, UNREADABLE_FILE, MISSING_CAPTION, UNPARSABLE_RECORD, NOT_A_RECORD, MISSING_IMAGE)
REASONS = (*SAMPLE_REASONS, TRUNCATED_TAR)

COUNTS_FOLDER = "bad_samples"


class BadSampleLimitExceeded(ValueError):
    """Too large a share of the samples read so far was broken: the data, not the run, needs fixing."""


class BadSampleCounter:
    """Counts good and skipped samples of one stream (one rank, one worker, one pass).

    ``check`` raises ``BadSampleLimitExceeded`` once at least ``min_samples`` were read and
    the skipped share is above ``max_bad_fraction`` (a few bad samples at the very start of
    a stream must not stop a run).

    ``source`` names the data (a file, a shard pattern) in the error. ``muted`` drops events
    (used while a resumed stream re-reads raw samples whose events the restored counts hold).
    """

    def __init__(self, report_dir: str | os.PathLike | None, stream_name: str, max_bad_fraction: float = 0.25,
                 min_samples: int = 50, flush_every: int = 500, source: str = "the data") -> None:
        self.path = Path(report_dir) / COUNTS_FOLDER / f"{stream_name}.json" if report_dir else None
        self.max_bad_fraction, self.min_samples, self.flush_every = max_bad_fraction, min_samples, flush_every
        self.source, self.muted = source, False
        self.good = 0
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._seen_shards: set[str] = set()

    def state(self) -> dict:
        """The counts as plain JSON data, to store with a stream position in a checkpoint."""
        return {"good": self.good, "counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()},
                "seen_shards": sorted(self._seen_shards)}

    def load_state(self, state: dict) -> None:
        self.good, self.counts = state["good"], Counter(state["counts"])
        self.examples = {k: list(v) for k, v in state["examples"].items()}
        self._seen_shards = set(state["seen_shards"])
        self.flush()

    @property
    def bad(self) -> int:
        return sum(self.counts[r] for r in SAMPLE_REASONS)

    def add_good(self) -> None:
        self.good += 1
        if self.good % self.flush_every == 0:
            self.flush()

    def add_bad(self, reason: str, where: str) -> None:
        if self.muted:
            return
        if reason == TRUNCATED_TAR:
            # webdataset may report one damaged shard more than once (member, then stream).
            if where in self._seen_shards:
                return
            self._seen_shards.add(where)
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(where)
        self.flush()
        self.check()

    def check(self, final: bool = False) -> None:
        total = self.good + self.bad
        if total == 0 or (total < self.min_samples and not final):
            return
        if self.bad / total > self.max_bad_fraction:
            detail = ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items()))
            raise BadSampleLimitExceeded(
                f"{self.bad} of {total} samples read from {self.source} were broken ({detail}; e.g. {self.examples}), "
                f"above --max_bad_fraction {self.max_bad_fraction}. Check the data paths and caption field, "
                "or raise --max_bad_fraction if this data is known to be this noisy."
            )

    def finish(self) -> None:
        self.flush()
        self.check(final=True)

    def flush(self) -> None:
        if self.path is None:
            return
        data = {"good": self.good, "counts": dict(self.counts), "examples": self.examples}
        write_json_atomically(self.path, data)  # readers never see half a file


def collect_bad_samples(report_dir: str | os.PathLike) -> dict:
    """Sum the per-stream files under ``report_dir``: totals per reason, good count, share."""
    good, counts, examples = 0, Counter(), {}
    for f in sorted((Path(report_dir) / COUNTS_FOLDER).glob("*.json")):
        data = json.loads(f.read_text())
        good += data["good"]
        counts.update(data["counts"])
        for reason, keys in data["examples"].items():
            examples.setdefault(reason, []).extend(keys[: 5 - len(examples.get(reason, []))])
    bad = sum(counts[r] for r in SAMPLE_REASONS)
    return {
        "good_samples": good,
        "bad_samples": bad,
        "bad_fraction": bad / (good + bad) if good + bad else 0.0,
        "by_reason": {r: counts.get(r, 0) for r in REASONS},
        "examples": examples,
    }
