"""The comparison's outputs: per-objective means and seed spread, a markdown table, a PNG plot."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

PROBE_TASKS = ("reading_seen", "reading_unseen", "count", "colour", "position", "presence")
# Reported only where a run has them (a reading curriculum with a limited vocabulary: ``cpu-reading``).
OPTIONAL_PROBE_TASKS = ("reading_word_seen",)
LLAVA_TASKS = ("letter_seen", "letter_unseen", "count", "colour", "position", "presence", "choice", "word")
NAMES = {"caption": "OpenVision 2 (caption only)", "openvision": "OpenVision-1 style", "clip": "CLIP style (sigmoid)",
         "coca": "CoCa (open_clip)", "random": "random tower (untrained)"}


def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(runs: dict[str, dict[str, dict]]) -> dict:
    """runs[seed][objective] = {'pretrain', 'probe', 'retrieval', 'llava'} -> per objective, mean/std over seeds."""
    objectives = sorted({o for per_seed in runs.values() for o in per_seed}, key=list(NAMES).index)
    tasks = probe_tasks(runs)
    out = {}
    for o in objectives:
        rows = [per_seed[o] for per_seed in runs.values() if o in per_seed]

        def get(*keys, rows=rows) -> list:
            return [_dig(r, keys) for r in rows]

        out[o] = {
            "cost": {k: _spread(get("pretrain", k)) for k in ("steps", "train_flops", "wall_s", "peak_mb")},
            "probe_patch": {t: _spread(get("probe", "patch", t)) for t in tasks},
            "probe_pooled": {t: _spread(get("probe", "pooled", t)) for t in tasks},
            "llava": {t: _spread(get("llava", "per_task", t)) for t in LLAVA_TASKS},
            "retrieval": {k: _spread(get("retrieval", k)) for k in ("image_to_text_r1", "text_to_image_r1")},
        }
    return out


def probe_tasks(runs: dict[str, dict[str, dict]]) -> tuple[str, ...]:
    """``PROBE_TASKS``, then each optional task some probe record holds (so other recipes' tables are as they were)."""
    held = {t for per_seed in runs.values() for r in per_seed.values() for t in r.get("probe", {}).get("patch", {})}
    return PROBE_TASKS[:2] + tuple(t for t in OPTIONAL_PROBE_TASKS if t in held) + PROBE_TASKS[2:]


def _dig(record: dict, keys: tuple) -> float | None:
    for k in keys:
        if not isinstance(record, dict) or k not in record:
            return None
        record = record[k]
    return record


def _cell(s: dict, digits: int = 3, seeds: int = 0) -> str:
    """mean ± std; ``seeds``: the table's seed count, named in the cell when fewer seeds ran this one."""
    if s["mean"] is None:
        return "—"
    text = f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s["n"] > 1 else f"{s['mean']:.{digits}f}"
    return text + (f" (n={s['n']})" if s["n"] < seeds else "")


def _tasks(summary: dict) -> tuple[str, ...]:
    """The probe tasks of a summary, in ``summarise``'s order."""
    return tuple(next(iter(summary.values()))["probe_patch"]) if summary else PROBE_TASKS


def markdown(summary: dict, settings: dict, majority: dict | None = None) -> str:
    seeds = max((s["cost"]["steps"]["n"] for s in summary.values()), default=0)
    tasks = _tasks(summary)
    lines = [f"Seeds: {seeds} (cells: mean ± standard deviation over seeds). Equal cost = equal counted training "
             f"FLOPs ({settings['budget']['objective']} for {settings['budget']['steps']} steps).", "",
             "| objective | steps | training TFLOPs | wall-clock s | peak memory MB | "
             + " | ".join(f"probe {t}" for t in tasks) + " |", "|---" * (5 + len(tasks)) + "|"]
    for o, s in summary.items():
        c = s["cost"]
        flops = c["train_flops"]  # none for the untrained tower
        tflops = flops if flops["mean"] is None else {**flops, "mean": flops["mean"] / 1e12, "std": (flops["std"] or 0) / 1e12}
        lines.append(f"| {NAMES.get(o, o)} | {_cell(c['steps'], 0, seeds)} | {_cell(tflops, 2)} | {_cell(c['wall_s'], 0)} | "
                     f"{_cell(c['peak_mb'], 0)} | " + " | ".join(_cell(s["probe_patch"][t], seeds=seeds) for t in tasks) + " |")
    if majority:
        lines.append("| majority answer | | | | | " + " | ".join(f"{majority.get(t, float('nan')):.3f}" for t in tasks) + " |")
    lines += ["", "Probes of the pooled feature (the mean patch token):", "",
              "| objective | " + " | ".join(tasks) + " |", "|---" * (1 + len(tasks)) + "|"]
    for o, s in summary.items():
        lines.append(f"| {NAMES.get(o, o)} | " + " | ".join(_cell(s["probe_pooled"][t], seeds=seeds) for t in tasks) + " |")
    lines += ["", "LLaVA (stage 1 + LoRA stage 2, held-out questions, exact match) and zero-shot retrieval (R@1):", "",
              "| objective | " + " | ".join(LLAVA_TASKS) + " | image→text | text→image |",
              "|---" * (3 + len(LLAVA_TASKS)) + "|"]
    for o, s in summary.items():
        if all(v["mean"] is None for v in [*s["llava"].values(), *s["retrieval"].values()]):
            continue  # the untrained tower: probes only
        lines.append(f"| {NAMES.get(o, o)} | " + " | ".join(_cell(s["llava"][t], seeds=seeds) for t in LLAVA_TASKS) + " | "
                     + " | ".join(_cell(s["retrieval"][k], seeds=seeds) for k in ("image_to_text_r1", "text_to_image_r1")) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Probe accuracy (patch view) per task against measured pretraining wall-clock, seed spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _tasks(summary)
    columns = math.ceil(len(tasks) / 2)
    fig, axes = plt.subplots(2, columns, figsize=(11 * columns / 3, 6.5), sharex=True)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        for o, s in summary.items():
            x, y = s["cost"]["wall_s"], s["probe_patch"][task]
            if x["mean"] is None and y["mean"] is not None:  # the untrained tower: no cost, a floor
                ax.axhline(y["mean"], color="grey", linestyle="--", label=NAMES.get(o, o))
            if x["mean"] is None or y["mean"] is None:
                continue
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", capsize=3, label=NAMES.get(o, o))
        ax.set(title=task, xlabel="pretraining wall-clock (s)", ylabel="probe accuracy")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Equal training FLOPs: tower quality against measured cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
