"""A deadline on the distributed set-up that ``TrainingArguments`` starts while the flags are parsed.

Why: in a group that ``torchrun --max-restarts`` restarts after a lost rank, gloo's connection set-up
(``connectFullMesh`` inside ``init_process_group``) can wait forever, past its own timeout (seen on
a 2-core machine: both ranks in ``Pair::waitUntilConnected`` for an hour). A process stuck there is
neither alive nor failed, so the launcher never restarts it. With this deadline it exits with the
stacks of its threads, and the launcher restarts the group as it does for any failed rank.
``faulthandler``'s timer runs in its own C thread, so it fires even while gloo holds the GIL.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import sys
from contextlib import contextmanager

from transformers import TrainingArguments


def _ddp_timeout(argv: list[str]) -> float:
    """``--ddp_timeout`` (or ``--ddp-timeout``, as ``HfArgumentParser`` also takes) from the command
    line, else ``TrainingArguments``' own default. Read before that parser runs, as it starts the group."""
    default = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "ddp_timeout")
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--ddp_timeout", "--ddp-timeout", type=float, default=float(default))
    return parser.parse_known_args(argv)[0].ddp_timeout


@contextmanager
def distributed_setup_deadline(argv: list[str] | None = None):
    """Inside the block a process launched as one rank of several (``WORLD_SIZE`` > 1) exits with
    status 1 if the block is not done within ``--ddp_timeout`` seconds; elsewhere a no-op.
    ``argv``: the flags, ``sys.argv[1:]`` when None (as ``HfArgumentParser``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    timeout = _ddp_timeout(sys.argv[1:] if argv is None else argv)
    sys.stderr.write(f"distributed set-up must finish within --ddp_timeout {timeout:g} s, else this rank exits "
                     "so the launcher can restart the group\n")
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
