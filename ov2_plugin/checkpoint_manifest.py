"""What a complete checkpoint holds, and a check of it cheap enough to run on multi-GB files at every resume.

``manifest.json`` is written by the main process into the staging folder once every rank has
written its files, just before the folder is renamed into place. It lists every file of the
checkpoint (DeepSpeed's ``global_step*/`` shards included) with its size and a sha256 of its first
and last MiB (of the whole file below 2 MiB):

``{"format": 1, "step": 8, "files": {"model.safetensors": {"size": 21859200, "sha256_ends": "..."}}}``

What the check catches, and why not a hash of every byte:

- a file cut short (a copy between clusters stopped, a full disk, a power loss before the data
  reached the disk: ext4 can leave a renamed file empty) or grown: the size;
- a file replaced by another checkpoint's or overwritten from its start or its end: the hashes;
- a missing file: the listing.

It reads 2 MiB a file whatever its size, so verifying an L/14 checkpoint with its AdamW state
(~3.6 GB) reads ~20 MB. A sha256 of every byte would read all 3.6 GB at every save and every
resume (seconds on a local NVMe disk, minutes on a network file system) to catch what this misses:
bytes flipped inside an unchanged-size file, which storage checksums (ZFS, object stores) already
cover. Besides the manifest, each safetensors file's header is parsed and its length checked
against the header's offsets, and each torch (zip) file's central directory is read; both also
work on checkpoints written before manifests existed (or by a plain ``Trainer``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import zipfile
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
EDGE_BYTES = 1 << 20  # hashed at each end of a file
_ZIP_MAGIC = b"PK\x03\x04"


def file_record(path: Path) -> dict:
    """``{"size", "sha256_ends"}`` of one file: its length and a sha256 of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= 2 * EDGE_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(EDGE_BYTES))
            f.seek(size - EDGE_BYTES)
            h.update(f.read(EDGE_BYTES))
    return {"size": size, "sha256_ends": h.hexdigest()}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: str | os.PathLike, step: int) -> None:
    """List every file of ``folder`` (a finished checkpoint, before it is renamed into place).

    Each file's format is checked first: a writer that lost data without raising (a small ``torch.save``
    to a full device can) is an ``OSError`` here, not a manifest that vouches for a broken file.
    """
    folder = Path(folder)
    for path in _files(folder):
        problem = _format_problem(path)
        if problem:
            raise OSError(errno.EIO, f"{path.name} is broken right after it was written ({problem})", str(path))
    files = {p.relative_to(folder).as_posix(): file_record(p) for p in _files(folder)}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))


def verify_checkpoint(folder: str | os.PathLike) -> str | None:
    """None when ``folder`` is intact, else what is wrong with it, in a few words."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return f"{MANIFEST} does not parse"
        for name, expected in listed.items():
            problem = _differs(folder / name, expected)
            if problem:
                return f"{name}: {problem}"
    for path in _files(folder):
        problem = _format_problem(path)
        if problem:
            return f"{path.relative_to(folder).as_posix()}: {problem}"
    return None


def _differs(path: Path, expected: dict) -> str | None:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != expected["size"]:
        return f"{size} bytes, {expected['size']} written"
    if file_record(path)["sha256_ends"] != expected["sha256_ends"]:
        return "its first or last MiB differs from what was written"
    return None


def _format_problem(path: Path) -> str | None:
    """A structural check of the file types a checkpoint holds (safetensors, torch zip, JSON)."""
    try:
        if path.suffix == ".safetensors":
            return _safetensors_problem(path)
        if path.suffix == ".json":
            json.loads(path.read_bytes())
            return None
        with path.open("rb") as f:
            zipped = f.read(4) == _ZIP_MAGIC
        if zipped:  # torch.save's format: the central directory sits at the end of the file
            with zipfile.ZipFile(path):
                return None
    except (ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile, OSError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """The header parses and the file is exactly as long as the header's tensors need."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return f"header of {n} bytes in a file of {size}"
        header = json.loads(f.read(n))
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{size} bytes, its header needs {8 + n + end}"
    return None


__all__ = ["MANIFEST", "file_record", "verify_checkpoint", "write_manifest"]
