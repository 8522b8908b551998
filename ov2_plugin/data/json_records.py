"""Random access to the records of a JSONL file or a JSON array without holding them in memory.

A caption file can be many gigabytes (LLaVA's JSON arrays, Recap-style JSONL dumps). Reading
it with ``json.load`` costs several times its size in Python objects, in every loader worker.
Instead one pass at construction records where each record's bytes are (8 bytes a JSONL line,
16 a JSON array element, in numpy arrays), and a record is parsed only when its sample is read:
memory stays flat while streaming and any record can be reached by index (resume, sharding).

- JSONL: one record a line. A line is found by the newline bytes alone, so a line that does not
  parse is the sample's problem (skipped and counted, ``file:line`` in the report), not the file's.
- JSON array: the standard library has no incremental parser, so the elements' spans come from
  ``json.JSONDecoder.raw_decode`` run over the file in 1 MiB pieces, decoded as Latin-1 (one
  character per byte, so character offsets are byte offsets; JSON's structure is all ASCII, and
  the records themselves are decoded as UTF-8 when read). A malformed array cannot be split
  into records at all, so it stops with its byte offset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CHUNK = 1 << 20
_WHITESPACE = " \t\r\n"


class RecordFile:
    """The records of ``path`` (``.jsonl``, or a JSON array), by index; ``get(i)`` parses one.

    ``where(i)`` names record ``i`` for reports: ``file:LINE`` (JSONL) or ``file#INDEX`` (array).
    The open file handle is per process (loader workers are forked after construction).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Caption file {self.path} not found; pass --json_path with a .json or .jsonl file.")
        self.jsonl = self.path.suffix == ".jsonl" or _first_character(self.path) not in ("[", "")
        self._spans = _jsonl_spans(self.path) if self.jsonl else _array_spans(self.path)
        self._handle, self._pid = None, None

    def __len__(self) -> int:
        return len(self._spans) - 1 if self.jsonl else len(self._spans)

    def where(self, index: int) -> str:
        return f"{self.path}:{index + 1}" if self.jsonl else f"{self.path}#{index}"

    def raw(self, index: int) -> bytes:
        if self.jsonl:
            start, end = int(self._spans[index]), int(self._spans[index + 1]) - 1  # without the newline
        else:
            start, end = (int(x) for x in self._spans[index])
        if self._pid != os.getpid():
            self._handle, self._pid = open(self.path, "rb"), os.getpid()  # noqa: SIM115 (kept open for the process)
        self._handle.seek(start)
        return self._handle.read(max(0, end - start))

    def get(self, index: int):
        """The parsed record; ``None`` for a blank line; raises ``ValueError`` when it is not JSON."""
        text = self.raw(index).decode("utf-8", errors="replace").strip()
        return json.loads(text) if text else None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": None}


def _first_character(path: Path) -> str:
    with path.open("rb") as f:
        while chunk := f.read(4096):
            text = chunk.decode("latin-1").lstrip(_WHITESPACE + "\ufeff\xef\xbb\xbf")
            if text:
                return text[0]
    return ""


def _jsonl_spans(path: Path) -> np.ndarray:
    """Start offsets of every line, plus one past the end: line ``i`` is ``[s[i], s[i+1] - 1)``."""
    starts, base = [np.zeros(1, np.int64)], 0
    with path.open("rb") as f:
        while chunk := f.read(16 * CHUNK):
            newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
            starts.append(newlines.astype(np.int64) + base + 1)
            base += len(chunk)
    spans = np.concatenate(starts)
    if spans[-1] != base:  # the last line has no newline: close it one past the end of the file
        spans = np.append(spans, base + 1)
    return spans


def _array_spans(path: Path) -> np.ndarray:
    """``[start, end)`` byte offsets of the elements of the JSON array in ``path``, shape (N, 2)."""
    decoder, spans = json.JSONDecoder(), []
    with path.open("rb") as f:
        reader = _Window(f)
        reader.skip_whitespace()
        if reader.next_char() != "[":
            raise ValueError(f"{path} is neither a JSON list of records nor JSONL (one record a line).")
        reader.skip_whitespace()
        if reader.peek() == "]":
            return np.zeros((0, 2), np.int64)
        while True:
            reader.skip_whitespace()
            start = reader.offset
            end = reader.decode_one(decoder, path)
            spans.append((start, end))
            reader.skip_whitespace()
            sep = reader.next_char()
            if sep == "]":
                break
            if sep != ",":
                raise ValueError(f"{path}: expected ',' or ']' after the record at byte {start}, found {sep!r}.")
    return np.asarray(spans, np.int64).reshape(-1, 2)


class _Window:
    """A sliding Latin-1 view of a binary file: ``offset`` is the byte offset of the cursor."""

    def __init__(self, f) -> None:
        self.f, self.text, self.pos, self.base, self.eof = f, "", 0, 0, False

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text, self.base, self.pos = self.text[self.pos:] + chunk.decode("latin-1"), self.offset, 0
        return True

    def peek(self) -> str:
        while self.pos >= len(self.text):
            if not self._more():
                return ""
        return self.text[self.pos]

    def next_char(self) -> str:
        char = self.peek()
        self.pos += len(char)
        return char

    def skip_whitespace(self) -> None:
        while (char := self.peek()) and char in _WHITESPACE:
            self.pos += 1

    def decode_one(self, decoder: json.JSONDecoder, path: Path) -> int:
        """Parse the element at the cursor (reading more of the file while it is cut off); return its end offset."""
        while True:
            try:
                _, end = decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as err:
                if self._more():
                    continue
                raise ValueError(f"{path}: the JSON array is malformed at byte {self.base + err.pos} ({err.msg}); "
                                 "fix the file or write it as JSONL (one record a line) so bad records are skipped.") from err
            if len(self.text) - end < 64 and self._more():
                continue  # a number near the end of the piece ("3" of "3.5") may go on in the next one
            self.pos = end
            return self.base + end
