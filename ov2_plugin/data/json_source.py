"""LLaVA-style JSON/JSONL captions: ``{"image": "rel/path.jpg", "caption": "..."}`` or ``conversations``.

LLaVA's pretraining file (``blip_laion_cc_sbu_558k.json``) is a list of records with an
``image`` path relative to an image folder and a two-turn ``conversations`` list whose model
turn is the caption; plain caption files use a ``caption`` (or ``text``) field. Records are
the unit split across ranks and workers, so the split is exact at any world size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from .bad_samples import BadSampleCounter
from .streaming import RawSample, StreamingCaptions

MODEL_ROLES = ("gpt", "assistant", "model")


def load_records(path: str | Path) -> list[dict]:
    """A JSON list or a JSONL file of records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Caption file {path} not found; pass --json_path with a .json or .jsonl file.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a list of records; use a JSON list or JSONL.")
    return data


def record_caption(record: dict, caption_key: str | None = None) -> str | None:
    """The caption: ``caption_key`` if given, else ``caption``/``text``, else the first model turn."""
    for key in (caption_key,) if caption_key else ("caption", "text"):
        if isinstance(record.get(key), str):
            return record[key]
    if caption_key:
        return None
    for turn in record.get("conversations") or []:
        if isinstance(turn, dict) and turn.get("from") in MODEL_ROLES and isinstance(turn.get("value"), str):
            return turn["value"]
    return None


class JsonCaptions(StreamingCaptions):
    """Captioned images listed in a JSON/JSONL file, with paths relative to ``image_root``."""

    def __init__(self, json_path: str | Path, image_root: str | Path | None, transform, *,
                 caption_key: str | None = None, **kwargs) -> None:
        super().__init__(transform, **kwargs)
        self.records = load_records(json_path)
        self.image_root = Path(image_root) if image_root else Path(json_path).parent
        self.caption_key = caption_key

    def units(self) -> range:
        return range(len(self.records))

    def read(self, units: Sequence[int], counter: BadSampleCounter) -> Iterator[RawSample]:
        for i in units:
            record = self.records[i]
            image = record.get("image") if isinstance(record, dict) else None
            caption = record_caption(record, self.caption_key) if isinstance(record, dict) else None
            key = str(image or f"record {i}")
            # A record without an image path yields a path that does not exist: counted as unreadable.
            yield RawSample(key=key, caption=caption, path=self.image_root / image if image else Path("\0"))
