"""Turn a results JSON into the markdown table (ratios to the OV1-style baseline and to CoCa),
the target check, and a PNG chart.

The baselines are those ``ov2 compare`` trains (``ov2_plugin.baselines``, ``bench/variants.py``):
``ov1-*`` is OpenVision 1 (``OpenVisionModel``), ``coca`` open_clip's CoCa as ``ov2 compare`` trains
it (``CocaModel``: no attentional pooler, text side at the ViT's width).
"""

from __future__ import annotations

from pathlib import Path

OURS, OV1, OV1_2, COCA = "ov2-k0.35", "ov1-1cap", "ov1-2cap", "coca"
MIB = 2**20
BASELINES_NOTE = ("Baselines as `ov2 compare` trains them (`ov2_plugin.baselines`): `ov1-*` is OpenVision 1 "
                  "(`OpenVisionModel`, one or two 77-token captions), `coca` is open_clip's CoCa as `ov2 compare` "
                  "trains it (`CocaModel`: no attentional pooler, text tower and decoder at the ViT's width).")


def _ratio(rows: dict, a: str, b: str, key: str) -> float | None:
    if a not in rows or b not in rows or not rows[b].get(key):
        return None
    return rows[a][key] / rows[b][key]


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    rows = result["variants"]
    head = ("| variant | GFLOP/step | step s | samples/s | act. peak MiB | largest batch | % of matmul peak "
            "| FLOPs / OV1 | step / OV1 | step / OV1-2cap | step / CoCa | act. / OV1 | largest batch / OV1 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['flops_per_step'] / 1e9:.1f} | {r['median_step_s']:.3f} | {r['samples_per_s']:.2f} "
            f"| {r['activation_peak_bytes'] / MIB:.0f} | {r['largest_batch']} | {100 * r['hardware_efficiency']:.0f} % "
            f"| {_fmt(_ratio(rows, name, OV1, 'flops_per_step'))} | {_fmt(_ratio(rows, name, OV1, 'median_step_s'))} "
            f"| {_fmt(_ratio(rows, name, OV1_2, 'median_step_s'))} | {_fmt(_ratio(rows, name, COCA, 'median_step_s'))} "
            f"| {_fmt(_ratio(rows, name, OV1, 'activation_peak_bytes'))} | {_fmt(_ratio(rows, name, OV1, 'largest_batch'))} |"
        )
    return "\n".join(lines)


def targets(result: dict) -> list[dict]:
    """The issue's targets for OV2 (keep 0.35), each with its measured value and met/missed."""
    rows = result["variants"]
    if OURS not in rows:
        return []
    flop_ratio = _ratio(rows, OURS, OV1, "flops_per_step")
    checks = [
        ("step time / OV1-style (1 caption) <= counted FLOP ratio", _ratio(rows, OURS, OV1, "median_step_s"), flop_ratio, "<="),
        ("step time / OV1-style (2 captions) <= 0.75", _ratio(rows, OURS, OV1_2, "median_step_s"), 0.75, "<="),
        ("step time / open_clip CoCa <= 0.6", _ratio(rows, OURS, COCA, "median_step_s"), 0.6, "<="),
        ("largest batch / OV1-style >= 2", _ratio(rows, OURS, OV1, "largest_batch"), 2.0, ">="),
        ("activation peak / OV1-style <= 0.6", _ratio(rows, OURS, OV1, "activation_peak_bytes"), 0.6, "<="),
        ("FLOPs / step time >= 75 % of measured matmul throughput", rows[OURS]["hardware_efficiency"], 0.75, ">="),
    ]
    out = []
    for label, value, goal, op in checks:
        met = None if value is None or goal is None else (value <= goal if op == "<=" else value >= goal)
        out.append({"target": label, "value": value, "goal": goal, "met": met})
    return out


def _accounted(result: dict, variant: str, mode: str) -> dict | None:
    return next((r for r in result.get("accounted", []) if (r["variant"], r["checkpointing"]) == (variant, mode)), None)


def checkpointing_table(result: dict) -> str:
    """Every variant with and without checkpointing: measured beside accounted, ratios to OV1-2cap in the same mode."""
    modes = {"none": result["variants"], **result.get("checkpointed", {})}
    head = ("| variant | checkpointing | GFLOP/step (incl. recompute) | step s | samples/s | act. peak MiB measured "
            "| allocator MiB: end of forward / peak | accounted MiB: kept / + recompute peak "
            "| MiB per sample measured / accounted | largest batch "
            "| step s at largest | samples/s at largest | % of matmul ceiling | MFU (vendor peak) | step / no ckpt | act. / OV1-2cap | batch / OV1-2cap | batch / CoCa |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode, rows in modes.items():
        for name, r in rows.items():
            acc = _accounted(result, name, mode)
            plain = result["variants"].get(name)
            mfu = r.get("mfu_vendor_peak")
            alloc = r.get("allocated", {}).get(str(result["batch_size"]))
            lines.append(
                f"| {name} | {mode} | {r['flops_per_step'] / 1e9:.1f} | {r['median_step_s']:.3f} | {r['samples_per_s']:.2f} "
                f"| {r['activation_peak_bytes'] / MIB:.0f} "
                f"| {_fmt(alloc and alloc['kept_bytes'] / MIB, '.0f')} / {_fmt(alloc and alloc['peak_bytes'] / MIB, '.0f')} "
                f"| {_fmt(acc and acc['activation_bytes'] / MIB, '.0f')} / {_fmt(acc and acc['peak_bytes'] / MIB, '.0f')} "
                f"| {_fmt(r.get('activation_bytes_per_sample', 0) / MIB, '.1f')} / "
                f"{_fmt(acc and acc['peak_bytes_per_sample'] / MIB, '.1f')} | {r.get('largest_batch', '-')} "
                f"| {_fmt(r.get('largest_batch_step_s'), '.3f')} | {_fmt(r.get('largest_batch_samples_per_s'), '.1f')} "
                f"| {100 * r['hardware_efficiency']:.0f} % | {'-' if mfu is None else f'{100 * mfu:.0f} %'} "
                f"| {_fmt(plain and r['median_step_s'] / plain['median_step_s'])} "
                f"| {_fmt(_ratio(rows, name, OV1_2, 'activation_peak_bytes'))} "
                f"| {_fmt(_ratio(rows, name, OV1_2, 'largest_batch'))} | {_fmt(_ratio(rows, name, COCA, 'largest_batch'))} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in result["loadavg_before"]) + " before / " + ", ".join(
        f"{x:.2f}" for x in result["loadavg_after"]) + " after"
    lines = [
        f"Shape `{result['shape']}`, {result['precision']}, batch {result['batch_size']}, device {result.get('gpu', result['device'])}, "
        f"{result['cpu_count']} CPUs, torch {result['torch']}, started {result['started']}.",
        f"Load average (1, 5, 15 min): {load}. Matmul throughput measured in the run: "
        f"{result['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s before, {result['matmul_flops_per_s_after'] / 1e9:.1f} after "
        f"({result.get('matmul_size', 2048)}^3 {result['precision']}). "
        f"Memory budget for the largest batch: {result['budget_bytes'] / 2**30:.2f} GiB (model state + activations).",
        BASELINES_NOTE,
        "",
        table(result),
        "",
        "| target (OV2 keep 0.35) | measured | goal | |",
        "|---|---|---|---|",
    ]
    for t in targets(result):
        verdict = "?" if t["met"] is None else ("met" if t["met"] else "missed")
        lines.append(f"| {t['target']} | {_fmt(t['value'], '.3f')} | {_fmt(t['goal'], '.3f')} | {verdict} |")
    if result.get("checkpointed") or result.get("accounted"):
        peak = result.get("vendor_peak_flops_per_s")
        lines += ["", "With and without activation checkpointing (accounted: `bench/memory.py`, same shape and batch; "
                  + (f"vendor dense bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else "no vendor peak for this device")
                  + "):", "", checkpointing_table(result)]
    if result.get("ablation"):
        lines += ["", "Optimisations, OV2 keep 0.35 (each switched off in turn):", "",
                  "| case | step s | act. peak MiB | first loss |", "|---|---|---|---|"]
        for a in result["ablation"]:
            lines.append(f"| {a['case']} | {a['median_step_s']:.3f} | {a['activation_peak_bytes'] / MIB:.0f} | {a['first_loss']:.4f} |")
    if result.get("paper_flops"):
        lines += ["", "Counted FLOPs per sample (forward + backward, meta device, no padding) at the paper's sizes:", "",
                  "| shape | " + " | ".join(result["paper_flops"][next(iter(result["paper_flops"]))]) + " | OV2 / OV1 | OV2 / OV1-2cap | OV2 / CoCa |",
                  "|---|" + "---|" * (len(result["paper_flops"][next(iter(result["paper_flops"]))]) + 3)]
        for shape, f in result["paper_flops"].items():
            ratios = [f[OURS] / f[k] if k in f else None for k in (OV1, OV1_2, COCA)]
            lines.append(f"| {shape} | " + " | ".join(f"{v / 1e12:.3f} T" for v in f.values()) + " | "
                         + " | ".join(_fmt(r, ".3f") for r in ratios) + " |")
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["variants"]
    names = list(rows)
    base = rows.get(OV1) or next(iter(rows.values()))
    metrics = [("step time", "median_step_s"), ("FLOPs", "flops_per_step"), ("activation peak", "activation_peak_bytes"),
               ("largest batch", "largest_batch")]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(metrics)
    for i, (label, key) in enumerate(metrics):
        values = [rows[n][key] / base[key] if rows[n].get(key) and base.get(key) else 0.0 for n in names]  # 0 = not measured
        ax.bar([j + i * width for j in range(len(names))], values, width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_ylabel("relative to OV1-style (1 caption)")
    ax.set_title(f"{result['shape']} shape, {result['precision']}, batch {result['batch_size']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
