"""JSON records written whole or not at all.

A run killed mid-write must never leave half a record that a rerun would trust (a finished stage, a
finished comparison unit, the bad-sample counts): the text goes to a temporary file beside the
target, which is then renamed over it (atomic within one file system).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomically(path: Path, value, indent: int | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # one per process: ranks never share a temporary file
    tmp.write_text(json.dumps(value, indent=indent))
    os.replace(tmp, path)
