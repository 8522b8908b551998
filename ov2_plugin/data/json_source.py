"""LLaVA-style JSON/JSONL captions: ``{"image": "rel/path.jpg", "caption": "..."}`` or ``conversations``.

LLaVA's pretraining file (``blip_laion_cc_sbu_558k.json``) is a list of records with an
``image`` path relative to an image folder and a two-turn ``conversations`` list whose model
turn is the caption; plain caption files use a ``caption`` (or ``text``) field. Records are
the unit split across ranks and workers, so the split is exact at any world size, and they are
read one at a time from the file (``json_records``), never all at once.

Skipped and counted, with ``file:line`` (JSONL) or ``file#index`` (array) in the report: a line
that is not JSON, a record that is not an object, a record without an image, an empty or
whitespace-only caption, and the image problems every source counts (missing, corrupt, truncated).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from .bad_samples import MISSING_IMAGE, NOT_A_RECORD, UNPARSABLE_RECORD, BadSampleCounter
from .json_records import RecordFile
from .streaming import RawSample, StreamingCaptions

MODEL_ROLES = ("gpt", "assistant", "model")


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


def record_sample(record, key: str, where: str, image_root: Path, caption_key: str | None) -> RawSample | None:
    """A parsed record -> a raw sample (bad ones carry their reason); None for a blank line."""
    if record is None:
        return None
    if not isinstance(record, dict):
        return RawSample(key=key, caption=None, reason=NOT_A_RECORD, where=where)
    image = record.get("image")
    if not isinstance(image, str) or not image.strip():
        return RawSample(key=key, caption=None, reason=MISSING_IMAGE, where=where)
    return RawSample(key=key, caption=record_caption(record, caption_key), path=image_root / image,
                     where=f"{where} ({image})")


class JsonCaptions(StreamingCaptions):
    """Captioned images listed in a JSON/JSONL file, with paths relative to ``image_root``."""

    def __init__(self, json_path: str | Path, image_root: str | Path | None, transform, *,
                 caption_key: str | None = None, **kwargs) -> None:
        super().__init__(transform, **kwargs)
        self.records = RecordFile(json_path)
        self.image_root = Path(image_root) if image_root else Path(json_path).parent
        self.caption_key = caption_key

    def describe(self) -> str:
        return str(self.records.path)

    def units(self) -> range:
        return range(len(self.records))

    def read(self, units: Sequence[int], first_offset: int, counter: BadSampleCounter) -> Iterator[tuple[int, int, RawSample]]:
        name = self.records.path.name
        for pos, i in enumerate(units):
            i = int(i)
            key, where = f"{name}:{i}", self.records.where(i)
            try:
                record = self.records.get(i)
            except ValueError:  # json.JSONDecodeError is a ValueError
                yield pos, 0, RawSample(key=key, caption=None, reason=UNPARSABLE_RECORD, where=where)
                continue
            sample = record_sample(record, key, where, self.image_root, self.caption_key)
            if sample is not None:
                yield pos, 0, sample
