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
import faulthandler
import os
import sys
from contextlib import contextmanager


def _ddp_timeout(argv: list[str]) -> float:
    """``--ddp_timeout`` from the command line, else ``TrainingArguments``' default (1800 s)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--ddp_timeout", type=float, default=1800.0)
    return parser.parse_known_args(argv)[0].ddp_timeout


@contextmanager
def distributed_setup_deadline(argv: list[str]):
    """Inside the block a process launched as one rank of several (``WORLD_SIZE`` > 1) exits with
    status 1 if the block is not done within ``--ddp_timeout`` seconds; elsewhere a no-op."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    timeout = _ddp_timeout(argv)
    sys.stderr.write(f"distributed set-up must finish within --ddp_timeout {timeout:g} s, else this rank exits "
                     "so the launcher can restart the group\n")
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
