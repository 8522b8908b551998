"""Exact activation accounting: the bytes a training step keeps for backward, per component.

``python -m bench memory [--shapes L/14 So400M/14 cpu] [--out-dir DIR]``

Counted, not measured: the forward pass runs under ``torch.autograd.graph.saved_tensors_hooks``,
and every tensor autograd saves for backward is added up by its storage (a storage saved twice,
or through several views, counts once, whole: a view keeps all of its storage alive). Weights,
buffers and the batch itself are model state or data, not activations, and are left out; the
low-precision copies of the weights that autocast makes (and autograd saves) are counted, as their
own component. With activation checkpointing a recomputed block keeps only its inputs (saved by
``torch.utils.checkpoint`` through the same hooks), and its backward briefly holds what it would
have saved: the **recompute peak** is the largest such block, taken from the plain pass.

Components: ``vit`` (patch embedding + blocks + pooling), ``token dropping``, ``decoder``
(projection, embeddings, blocks, final norm), ``head + loss``, ``text tower`` and ``contrastive``
(the OV1-style image projection + InfoNCE; in CoCa's row its contrastive loss sits in ``head + loss``),
``weight casts``. A saved tensor belongs to the innermost tagged module running when it is saved;
code between modules (token dropping, the loss functions) to the component that follows the last
module that finished.

The models run on fake tensors (``FakeTensorMode``: meta storage, so no memory and no compute,
seconds at L/14) with CPU bf16 autocast, as the bench trains; the meta device itself has no
autocast. As on the meta device no values exist, so every caption position counts as valid
(no padding), as ``python -m bench flops`` counts. Not counted: gradients of activations in flight
during backward and allocator slack.

Largest batch: the step's peak (kept + recompute peak) is linear in the batch; counted at the
shape's batch and half of it, it predicts the largest batch whose model state (fp32 weights,
gradients, AdamW moments: 16 bytes per parameter) + peak fit the shape's budget (``variants.py``).
"""

from __future__ import annotations

import argparse
import json
import math
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode

from ov2_plugin.activation_checkpointing import set_checkpointing
from ov2_plugin.modeling_vision import sincos_2d_table

from .variants import SHAPES, VARIANTS, build_variant, checkpoint_coca, make_batch

HERE = Path(__file__).resolve().parent
MODES = ("none", "encoder", "all")
MIB, GIB = 2**20, 2**30

_DECODER = {"decoder.image_projection": "decoder", "decoder.embed_tokens": "decoder", "decoder.layers": "decoder",
            "decoder.norm": "decoder", "decoder.lm_head": "head + loss"}
# module -> component, and the component of whatever is saved after that module finished
TAGS = {
    "ov2": ({"vision_model": "vit", **_DECODER}, {"vit": "token dropping", "decoder": "head + loss"}),
    "ov1": ({"captioner.vision_model": "vit", **{f"captioner.{k}": v for k, v in _DECODER.items()},
             "image_projection": "contrastive", "text_encoder": "text tower"},
            {"vit": "vit", "decoder": "head + loss", "text tower": "contrastive"}),
    "coca": ({"coca.visual": "vit", "coca.text": "text tower", "coca.text_decoder": "decoder"},
             {"vit": "vit", "text tower": "text tower", "decoder": "head + loss"}),
}


class _AllPositionsValid(TorchFunctionMode):
    """``hidden[mask]`` with a boolean mask needs the mask's values; fake tensors have none, so every position counts."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool:
            return args[0].flatten(0, args[1].ndim - 1)
        return func(*args, **(kwargs or {}))


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s._cdata, s.nbytes()  # the StorageImpl's address: one per storage, also for meta/fake tensors


def _is_weight_cast(t: torch.Tensor) -> bool:
    """A cast copy of a parameter (autocast's), or a view of one (a linear layer saves the transposed weight)."""
    fn = (t._base if t._base is not None else t).grad_fn
    if fn is None or fn.name() != "ToCopyBackward0":
        return False
    nxt = fn.next_functions[0][0] if fn.next_functions else None
    return isinstance(getattr(nxt, "variable", None), nn.Parameter)


class SavedBytes:
    """Saved-for-backward bytes of one forward pass, by component and by block.

    ``tags``: module name -> component; ``after``: component -> component of what is saved outside
    every tagged module once that one finished; ``exclude``: tensors whose storages are not activations.
    """

    def __init__(self, model: nn.Module, tags: dict[str, str], after: dict[str, str], exclude: list[torch.Tensor]) -> None:
        self.components: dict[str, int] = {}
        self.blocks: dict[str, int] = {}  # bytes first saved inside each block, its input excluded
        self.excluded = {_storage(t)[0] for t in exclude}
        self.entries: dict[int, tuple] = {}  # storage -> (weak reference, bytes, component, block or None)
        self.active: list[str] = []
        self.block_stack: list[tuple[str, int | None]] = []
        self.last, self.after, self.handles = None, after, []
        for name, component in tags.items():
            module = model.get_submodule(name)  # a ModuleList is never called itself: tag its blocks
            for m in (module if isinstance(module, nn.ModuleList) else [module]):
                self.handles += [m.register_forward_pre_hook(lambda m, a, c=component: self.active.append(c)),
                                 m.register_forward_hook(lambda m, a, o: self._finish())]
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList):
                for i, block in enumerate(module):
                    self.handles += [block.register_forward_pre_hook(lambda m, a, n=f"{name}.{i}": self._enter(n, a)),
                                     block.register_forward_hook(lambda m, a, o: self._leave())]

    def _finish(self) -> None:
        self.last = self.active.pop()

    def _enter(self, name: str, args: tuple) -> None:
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.block_stack.append((name, None if first is None else _storage(first)[0]))

    def _leave(self) -> None:  # a forward hook that returned the popped item would replace the block's output
        self.block_stack.pop()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage(t)
        known = self.entries.get(key)
        if key not in self.excluded and (known is None or known[0].expired()):  # expired: the address was reused
            if _is_weight_cast(t):
                component = "weight casts"
            elif self.active:
                component = self.active[-1]
            else:
                component = self.after.get(self.last, "other") if self.last else "other"
            inner = self.block_stack[-1] if self.block_stack else None
            block = inner[0] if inner and key != inner[1] else None
            self.entries[key] = (StorageWeakRef(t.untyped_storage()), nbytes, component, block)
        # detached: the same storage, but no reference back to the graph; returning ``t`` itself would make a
        # reference cycle for saved outputs (node -> saved output -> node), keeping freed graphs' saves alive
        return t.detach()

    def finish(self) -> None:
        """Sum what is still alive (call while the loss, and so the graph, exists): saves of outputs nobody uses
        (e.g. the pooled output in a caption-only step) are freed with their graph and do not count."""
        for ref, nbytes, component, block in self.entries.values():
            if not ref.expired():
                self.components[component] = self.components.get(component, 0) + nbytes
                if block:
                    self.blocks[block] = self.blocks.get(block, 0) + nbytes

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def checkpointed_blocks(model: nn.Module) -> set[str]:
    """Names of the blocks that recompute: our blocks' flags, or open_clip's per-tower ``grad_checkpointing``."""
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            owner = model.get_submodule(name.rpartition(".")[0])
            for i, block in enumerate(module):
                if getattr(block, "gradient_checkpointing", False) or getattr(owner, "grad_checkpointing", False):
                    out.add(f"{name}.{i}")
    return out


def family(variant: str) -> str:
    return "ov2" if variant.startswith("ov2") else "ov1" if variant.startswith("ov1") else "coca"


def count_pass(variant, batch: dict, precision: str) -> SavedBytes:
    """One forward pass of ``variant.loss`` under the hooks; nothing is kept afterwards."""
    tags, after = TAGS[family(variant.name)]
    exclude = [*variant.model.parameters(), *variant.model.buffers(),
               *(t for v in batch.values() for t in (v if isinstance(v, list) else [v]))]
    counter = SavedBytes(variant.model, tags, after, exclude)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    try:
        with _AllPositionsValid(), autocast, torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            torch.manual_seed(0)
            loss = variant.loss(batch)
        counter.finish()
        del loss
    finally:
        counter.close()
    return counter


def account_variant(variant_name: str, shape_name: str, modes: tuple[str, ...] = MODES, precision: str = "bf16",
                    batch_sizes: tuple[int, ...] | None = None, budget_gib: float | None = None) -> list[dict]:
    """Rows for one variant at one shape: each checkpointing mode at the shape's batch (and half of it for the fit)."""
    shape = SHAPES[shape_name]
    big = shape.batch_size
    sizes = batch_sizes or (max(1, big // 2), big)
    budget = int((budget_gib or shape.budget_gib) * GIB)
    with torch.device("meta"):
        variant = build_variant(variant_name, shape)
    sincos_2d_table.cache_clear()  # its tables would be made as fake tensors here, and must not outlive this
    rows = []
    with ExitStack() as stack:
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        stack.callback(sincos_2d_table.cache_clear)
        variant.model.to_empty(device="cpu").train()
        params = sum(p.numel() for p in variant.model.parameters())
        counts = {}
        for b in sizes:
            batch = make_batch(shape, b, device="cpu")
            for mode in modes:
                build_mode(variant, mode)
                counts[b, mode] = (count_pass(variant, batch, precision), checkpointed_blocks(variant.model))
        for mode in modes:
            peaks = {}
            for b in sizes:
                counter, blocks = counts[b, mode]
                transient = max((counts[b, "none"][0].blocks.get(n, 0) for n in blocks), default=0) if mode != "none" else 0
                peaks[b] = (counter, transient, sum(counter.components.values()) + transient)
            counter, transient, peak = peaks[big]
            (b1, p1), (b2, p2) = (sizes[0], peaks[sizes[0]][2]), (big, peak)
            per_sample = (p2 - p1) / (b2 - b1) if b2 != b1 else p2 / b2
            fixed, state = p2 - per_sample * b2, 16 * params
            rows.append({
                "shape": shape_name, "variant": variant_name, "checkpointing": mode, "batch_size": big,
                "precision": precision, "activation_bytes": sum(counter.components.values()),
                "components": dict(sorted(counter.components.items())), "recompute_peak_bytes": transient,
                "peak_bytes": peak, "peak_bytes_per_sample": per_sample, "peak_bytes_fixed": fixed,
                "params": params, "state_bytes": state, "budget_bytes": budget,
                "predicted_largest_batch": max(0, math.floor((budget - state - fixed) / per_sample)),
            })
    return rows


def build_mode(variant, mode: str) -> None:
    if variant.name == "coca":
        checkpoint_coca(variant.model, mode)
    else:
        set_checkpointing(variant.model, mode)


def account(shapes: list[str], variants: list[str], modes: tuple[str, ...] = MODES, precision: str = "bf16") -> list[dict]:
    return [row for s in shapes for v in variants for row in account_variant(v, s, modes, precision)]


COMPONENTS = ("vit", "token dropping", "decoder", "head + loss", "text tower", "contrastive", "weight casts", "other")
OV1_2, OV1, COCA, OURS = "ov1-2cap", "ov1-1cap", "coca", "ov2-k0.35"


def _find(rows: list[dict], shape: str, variant: str, mode: str) -> dict | None:
    return next((r for r in rows if (r["shape"], r["variant"], r["checkpointing"]) == (shape, variant, mode)), None)


def _ratio(row: dict, other: dict | None, key: str) -> str:
    return "-" if not other or not other[key] else f"{row[key] / other[key]:.2f}"


def markdown(rows: list[dict]) -> str:
    """One table per shape (MiB at the shape's batch; ratios to the OV1-style rows with the same checkpointing)."""
    lines = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        sub = [r for r in rows if r["shape"] == shape]
        used = [c for c in COMPONENTS if any(r["components"].get(c) for r in sub)]
        first = sub[0]
        lines += [f"**{shape}**, batch {first['batch_size']}, {first['precision']}, budget "
                  f"{first['budget_bytes'] / GIB:g} GiB (model state + step peak) for the largest batch; MiB:", "",
                  "| variant | checkpointing | kept | " + " | ".join(used)
                  + " | recompute peak | per sample (peak) | kept / OV1 | kept / OV1-2cap | kept / CoCa "
                  "| largest batch | batch / OV1-2cap |",
                  "|---|---|" + "---|" * (len(used) + 9)]
        for r in sub:
            ref = {k: _find(rows, shape, k, r["checkpointing"]) for k in (OV1, OV1_2, COCA)}
            comps = " | ".join(f"{r['components'].get(c, 0) / MIB:.0f}" for c in used)
            lines.append(
                f"| {r['variant']} | {r['checkpointing']} | {r['activation_bytes'] / MIB:.0f} | {comps} "
                f"| {r['recompute_peak_bytes'] / MIB:.0f} | {r['peak_bytes_per_sample'] / MIB:.1f} "
                f"| {_ratio(r, ref[OV1], 'activation_bytes')} | {_ratio(r, ref[OV1_2], 'activation_bytes')} "
                f"| {_ratio(r, ref[COCA], 'activation_bytes')} | {r['predicted_largest_batch']} "
                f"| {_ratio(r, ref[OV1_2], 'predicted_largest_batch')} |")
        lines.append("")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets: at L/14 with the ViT checkpointed, OV2 kept bytes <= 0.55 and largest batch >= 2x of OV1-2cap."""
    ours, ref = _find(rows, "L/14", OURS, "encoder"), _find(rows, "L/14", OV1_2, "encoder")
    if not ours or not ref:
        return []
    kept = ours["activation_bytes"] / ref["activation_bytes"]
    batch = ours["predicted_largest_batch"] / max(ref["predicted_largest_batch"], 1)
    return [{"target": "L/14, ViT checkpointed: kept bytes / OV1-2cap <= 0.55", "value": kept, "met": kept <= 0.55},
            {"target": "L/14, ViT checkpointed: largest batch / OV1-2cap >= 2", "value": batch, "met": batch >= 2.0}]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["L/14", "So400M/14", "cpu"], choices=sorted(SHAPES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=["none", "encoder", "decoder", "all"])
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--out-dir", type=Path, default=HERE)
    args = p.parse_args(argv)
    if "none" not in args.modes:  # the recompute peak comes from the plain pass
        args.modes.insert(0, "none")
    rows = account(args.shapes, args.variants, tuple(args.modes), args.precision)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "memory-accounted.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows) + "".join(f"\n{t['target']}: {t['value']:.3f} ({'met' if t['met'] else 'missed'})"
                                    for t in targets(rows)) + "\n"
    (args.out_dir / "memory-accounted.md").write_text(text)
    print(text)
    print(f"wrote {args.out_dir / 'memory-accounted.json'} and .md")
