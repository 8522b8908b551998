"""One experiment run per output folder: the settings it was made with are stamped in ``settings.json``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from ..atomic_json import write_json_atomically

SETTINGS = "settings.json"


def claim_output_dir(out: Path, settings: dict, rerun: Iterable[str] = ()) -> None:
    """Claim ``out`` for a run with ``settings``: a new or empty folder, or one stamped with the same settings.

    Why: the experiments reuse what a folder already holds (language model, towers, data, finished units;
    the second process of a side-by-side run and a resumed comparison rely on it), so a folder made with
    other settings would silently mix runs. ``rerun``: subfolders whose ``eval.json`` this run writes
    again; an earlier one is removed so it cannot end up in the new tables.
    """
    stamp = out / SETTINGS
    if stamp.is_file():
        if json.loads(stamp.read_text()) != settings:
            raise ValueError(f"{out} holds a run with other settings (another recipe, sizes or seed; see {stamp}); "
                             "pass a new --output_dir.")
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no run settings; pass a new --output_dir.")
    else:
        write_json_atomically(stamp, settings, indent=2)
    for name in rerun:
        (out / name / "eval.json").unlink(missing_ok=True)


def finished_runs(out: Path, names: Iterable[str]) -> dict[str, dict] | None:
    """Each run's ``eval.json`` in ``out``, once every one of ``names`` has written it (a side-by-side
    process may still be running), else None."""
    names = list(names)
    if not all((out / n / "eval.json").is_file() for n in names):
        return None
    return {n: json.loads((out / n / "eval.json").read_text()) for n in names}


def publish_results(out: Path, results: dict, markdown: Callable[[dict], str]) -> dict:
    """``results.json`` and ``results.md`` in ``out``; the table is printed too."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "results.md").write_text(table)
    print(table)
    return results
