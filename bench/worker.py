"""One variant measured in a fresh process: memory at a small batch, step time and FLOPs at the
benchmark batch, then the largest batch under the memory budget; reports JSON.

A process per measurement because peak memory is per process: on the CPU the peak RSS after
setup (weights, gradients, AdamW state) is reset through ``/proc/self/clear_refs`` and read back
as ``VmHWM``; on a GPU ``max_memory_allocated`` after ``reset_peak_memory_stats`` (both through
``ov2_plugin.devices``). Gradients are
kept allocated between steps (``zero_grad(set_to_none=False)``) so that the post-setup figure
holds all model state and the peak above it is activations and temporaries only. The measurements
run in order of growing batch, so memory the allocator kept from an earlier step is reused
rather than counted twice.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ov2_plugin.devices import memory_bytes, peak_memory_bytes, reset_peak_memory
from ov2_plugin.experiments.cost import count_flops

from .variants import SHAPES, build_variant, make_batch


def make_optimizer(params: list[torch.nn.Parameter], kind: str) -> torch.optim.Optimizer:
    """AdamW with the release's hyper-parameters; ``kind`` picks torch's fused, foreach or for-loop kernel."""
    impl = {"fused": dict(fused=True), "foreach": dict(foreach=True), "loop": dict(foreach=False)}[kind]
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.2, **impl)


class Trainer:
    """One variant with its AdamW state, set up so that post-setup memory holds all model state."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.device = args, torch.device(args.device)
        self.shape = SHAPES[args.shape]
        before = memory_bytes(self.device)
        torch.manual_seed(0)
        self.variant = build_variant(args.variant, self.shape, checkpointing=args.checkpointing)
        model = self.variant.model.to(self.device)
        for m in (model, getattr(model, "captioner", None)):
            if hasattr(m, "fused_head_loss"):
                m.fused_head_loss = not args.no_fused_loss
        self.params = [p for p in model.parameters() if p.requires_grad]
        for p in self.params:  # gradients and AdamW state exist from here on: setup, not activations
            p.grad = torch.zeros_like(p)
        self.opt = make_optimizer(self.params, args.optimizer)
        self.opt.step()
        self.opt.zero_grad(set_to_none=False)
        self.loss_fn = torch.compile(self.variant.loss) if args.compile else self.variant.loss
        self.setup = reset_peak_memory(self.device)
        self.state_bytes = self.setup - before

    def forward(self, batch: dict) -> torch.Tensor:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.args.precision == "bf16" else nullcontext()
        kernels = sdpa_kernel([SDPBackend.MATH]) if self.args.attention == "math" else nullcontext()
        with autocast, kernels:
            return self.loss_fn(batch)

    def backward_and_update(self, loss: torch.Tensor) -> float:
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=False)
        return loss.item()  # .item() synchronises, so the step is fully timed

    def step(self, batch: dict) -> float:
        return self.backward_and_update(self.forward(batch))

    def activation_peak(self, batch_size: int) -> int:
        """Peak memory above post-setup during one step at ``batch_size`` (peak counter reset first)."""
        batch = make_batch(self.shape, batch_size, seed=0, device=self.device)
        reset_peak_memory(self.device)
        self.step(batch)
        return peak_memory_bytes(self.device) - self.setup


def allocated_during_step(trainer: Trainer, batch_size: int) -> dict:
    """Bytes the allocator holds for the step above the level before it: at the end of the forward
    pass (what is kept for backward, the figure ``bench/memory.py`` accounts) and at the step's peak.

    On a GPU ``memory_allocated`` / ``max_memory_allocated``. On a CPU, where torch keeps no such
    counter, the profiler's memory events carry the CPU allocator's running total
    (``total_allocated``), unlike the RSS high-water mark free of what glibc keeps mapped.
    """
    batch = make_batch(trainer.shape, batch_size, seed=0, device=trainer.device)
    if trainer.device.type == "cuda":
        before = reset_peak_memory(trainer.device)
        loss = trainer.forward(batch)
        kept = memory_bytes(trainer.device) - before
        trainer.backward_and_update(loss)
        return {"kept_bytes": kept, "peak_bytes": peak_memory_bytes(trainer.device) - before}
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    def totals(prof) -> list[tuple[int, int, int]]:  # (time, size, allocator total after it), in time order
        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
            stack.extend(node.children)
        return sorted(events)

    # Two sessions: the allocator's total runs on across them, so the first one's last value is the
    # level at the end of the forward pass.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as fwd:
        loss = trainer.forward(batch)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as bwd:
        trainer.backward_and_update(loss)
    forward, backward = totals(fwd), totals(bwd)
    before = forward[0][2] - forward[0][1]
    return {"kept_bytes": forward[-1][2] - before, "peak_bytes": max(t for _, _, t in forward + backward) - before}


def largest_batch(trainer: Trainer, points: dict[int, int], budget: int, cap: int) -> dict:
    """Largest batch with state + activation peak <= budget.

    Activation memory is linear in the batch: fitted on the measured points, then the predicted
    batch is run and measured; shrunk and re-measured while over budget.
    """
    (b1, a1), (b2, a2) = sorted(points.items())[:1] + sorted(points.items())[-1:]
    slope = max((a2 - a1) / max(b2 - b1, 1), 1.0)
    fixed = trainer.state_bytes + a2 - slope * b2
    # RSS moves in pages and allocator arenas: at tiny sizes the fitted slope can be ~0, so cap the guess
    guess = max(1, min(math.floor((budget - fixed) / slope), cap))
    tries = []
    for _ in range(3):
        try:
            used = trainer.state_bytes + trainer.activation_peak(guess)
        except torch.OutOfMemoryError:  # GPU: over the device's memory, so over any budget that fits it
            trainer.opt.zero_grad(set_to_none=False)
            torch.cuda.empty_cache()
            used = 2 * budget
        tries.append({"batch_size": guess, "bytes": used})
        if used <= budget or guess == 1:
            break
        guess = max(1, math.floor(guess * budget / used) - 1)
    return {"largest_batch": tries[-1]["batch_size"], "bytes_at_largest": tries[-1]["bytes"],
            "activation_bytes_per_sample": slope, "fit_tries": tries}


def run(args: argparse.Namespace) -> dict:
    """Small-batch memory, then timing (FLOPs counted on the first step), then the largest-batch search."""
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    trainer = Trainer(args)
    small = max(1, args.batch // 4)
    points = {small: trainer.activation_peak(small)}
    batch = make_batch(trainer.shape, args.batch, seed=0, device=device)
    reset_peak_memory(device)
    flops, times, losses = None, [], []
    for i in range(args.warmup + args.steps):
        if i == 0 and args.count_flops and not args.compile:
            flops, loss = count_flops(lambda: trainer.step(batch))  # counted on the first (warm-up) step, never timed
            losses.append(loss)
            continue
        start = time.perf_counter()
        losses.append(trainer.step(batch))
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    points[args.batch] = peak_memory_bytes(device) - trainer.setup
    allocated = {str(b): allocated_during_step(trainer, b) for b in (small, args.batch)}
    result = {
        "variant": args.variant, "shape": args.shape, "batch_size": args.batch, "precision": args.precision,
        "device": str(device), "optimizer": args.optimizer, "fused_head_loss": not args.no_fused_loss,
        "compile": args.compile, "attention": args.attention, "checkpointing": args.checkpointing, "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in trainer.params), "flops_per_step": flops, "step_times_s": times,
        "median_step_s": statistics.median(times) if times else None, "min_step_s": min(times) if times else None, "state_bytes": trainer.state_bytes,
        "activation_peak_bytes": points[args.batch], "activation_peak_bytes_small": points[small],
        "small_batch_size": small, "losses": losses, "allocated": allocated,
    }
    if args.budget_gib:
        result.update(largest_batch(trainer, points, int(args.budget_gib * 2**30), cap=16 * args.batch))
        result.update(time_largest_batch(trainer, result["largest_batch"], args.steps))
    return result


def time_largest_batch(trainer: Trainer, batch_size: int, steps: int) -> dict:
    """Step time and samples/s at the largest batch (one untimed step first: new shapes, new kernels)."""
    batch = make_batch(trainer.shape, batch_size, seed=1, device=trainer.device)
    times = []
    for i in range(1 + steps):
        start = time.perf_counter()
        trainer.step(batch)
        if i:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"largest_batch_step_s": step, "largest_batch_samples_per_s": batch_size / step}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench worker", description=__doc__)
    p.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    p.add_argument("--variant", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=4, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first one counts FLOPs)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--optimizer", default="fused", choices=["fused", "foreach", "loop"])
    p.add_argument("--no-fused-loss", action="store_true", help="plain lm_head + cross_entropy (full logits)")
    p.add_argument("--attention", default="default", choices=["default", "math"],
                   help="SDPA kernels allowed: torch's choice (flash/efficient/cudnn) or the math one")
    p.add_argument("--checkpointing", default="none", choices=["none", "encoder", "decoder", "all"],
                   help="activation checkpointing of the blocks (bench/variants.py: build_variant)")
    p.add_argument("--count-flops", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss function (GPU script)")
    p.add_argument("--budget-gib", type=float, default=0.0, help="also find the largest batch under this budget")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    result = run(args)
    with open(args.out, "w") as f:
        json.dump(result, f)
