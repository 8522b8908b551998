"""The Trainer of ``ov2 pretrain``: the HF ``Trainer`` plus three guarantees a long run needs.

1. Atomic checkpoints. ``Trainer`` writes ``checkpoint-N`` file by file in place, so a run
   killed mid-save leaves a half folder that ``get_last_checkpoint`` happily picks. Here the
   whole checkpoint is written under ``.staging/`` and renamed into place once every rank
   has finished (a rename within one file system is atomic), so a ``checkpoint-N`` folder is
   always complete and ``newest_complete_checkpoint`` can trust it.
2. A non-finite loss stops the run before the optimizer applies it, on every rank at once,
   with a message naming the last good checkpoint (which is therefore never overwritten by
   NaN weights).
3. Streamed (iterable) datasets are split across ranks by the dataset itself (by shard, see
   ``data.sharding``); ``accelerate`` would otherwise wrap them so that every rank reads and
   decodes the whole stream and keeps one slice of it.
4. Streams resume where they stood: every checkpoint holds each rank's stream position
   (``data.stream_state``), and a resumed run continues from it instead of re-reading and
   dropping the batches already trained (the Trainer's ``skip_first_batches``).
5. Faults while saving or resuming end in one line, not a traceback. A save that fails to write
   (a full disk: ``OSError``, or PyTorch's ``RuntimeError`` from its zip writer) stops every rank
   with ``CheckpointWriteError`` naming the checkpoint, the error, the last complete checkpoint and
   how to resume, and removes the partial one. Every complete checkpoint carries a manifest
   (``checkpoint_manifest``); ``newest_intact_checkpoint`` passes over a damaged one.
6. The loss is the global batch's. Our models take ``num_items_in_batch`` (the step's caption tokens
   over all ranks and accumulated micro-batches), which the Trainer counts and passes; for the
   contrastive objectives under gradient accumulation this Trainer also passes ``StepFeatures``
   (``baselines.losses``), so 1 x 8, 1 x 4 with 2 accumulation steps and 2 ranks x 4 make one update.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .baselines.losses import StepFeatures
from .checkpoint_manifest import verify_checkpoint, write_manifest
from .data.stream_state import STATE_KEY, StreamTracker, read_stream_state, write_final_counts

logger = logging.getLogger(__name__)

STAGING = ".staging"
TRAINER_STATE = "trainer_state.json"  # written last by Trainer._save_checkpoint
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; training stopped before the update."""


class CheckpointError(ValueError):
    """A checkpoint could not be written, or one named for resuming is damaged; the message says what to do.

    A ``ValueError`` like ``NonFiniteLossError``: ``ov2`` prints it as one line (``cli.USER_ERRORS``).
    """


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (full disk, I/O error); the partial one was removed on every rank's behalf."""


class DamagedCheckpointError(CheckpointError):
    """The checkpoint named for resuming fails its manifest or format check."""


def newest_complete_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The highest-step ``checkpoint-N`` in ``run_dir`` holding a trainer state, or None.

    Only folders renamed into place by ``Ov2Trainer`` (or complete Trainer checkpoints) qualify;
    anything under ``.staging`` is an interrupted save and is ignored.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = complete_checkpoints(run_dir)
    return str(found[0]) if found else None


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``run_dir`` holding a trainer state, newest (highest N) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    steps = [
        (int(m.group(1)), p) for p in run_dir.iterdir()
        if (m := _CHECKPOINT.match(p.name)) and p.is_dir() and (p / TRAINER_STATE).is_file()
    ]
    return [p for _, p in sorted(steps, reverse=True)]


def newest_intact_checkpoint(run_dir: str | os.PathLike) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete checkpoint that passes ``verify_checkpoint``, and the newer ones passed over
    as ``(folder, what is wrong)``. Checks newest first and stops at the first intact one."""
    damaged = []
    for folder in complete_checkpoints(run_dir):
        problem = verify_checkpoint(folder)
        if problem is None:
            return str(folder), damaged
        damaged.append((str(folder), problem))
    return None, damaged


def set_damaged_aside(folder: str | os.PathLike) -> str:
    """Rename a damaged ``checkpoint-N`` to ``checkpoint-N.damaged`` (kept for inspection): out of the
    pattern, so rotation (``--save_total_limit``) keeps counting intact checkpoints and a later save
    of step N does not collide with it. Returns the new name."""
    folder = Path(folder)
    target = folder.with_name(folder.name + ".damaged")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(folder, target)
    return str(target)


def clean_staging(run_dir: str | os.PathLike) -> None:
    """Remove ``.staging/`` left by a save that was killed (a complete checkpoint is never in it)."""
    staging = Path(run_dir) / STAGING
    if staging.exists():
        left = sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []
        shutil.rmtree(staging, ignore_errors=True)
        logger.warning("removed %s, the unfinished save%s %s of an interrupted run", staging,
                       "s" if len(left) != 1 else "", ", ".join(left) or "(empty)")


# What the writers raise when the file system refuses a write (seen on a full tmpfs):
# PyTorch's zip writer a RuntimeError ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs
# 598", "PytorchStreamWriter failed writing file ...", "basic_ios::clear: iostream error"); safetensors a
# SafetensorError ("Error while serializing: I/O error: No space left on device (os error 28)").
_WRITER_ERRORS = {
    "RuntimeError": ("inline_container", "PytorchStreamWriter", "iostream error", "file write failed"),
    "SafetensorError": ("I/O error", "os error"),
}


def is_write_failure(err: BaseException) -> bool:
    """An error of writing files rather than a bug: any ``OSError``, or a writer's own error for one."""
    if isinstance(err, OSError):
        return True
    markers = next((m for cls in type(err).__mro__ if (m := _WRITER_ERRORS.get(cls.__name__))), ())
    return any(marker in str(err) for marker in markers)


def _describe_write_failure(err: BaseException) -> str:
    if isinstance(err, OSError):
        if err.errno is None:
            return f"{type(err).__name__}: {err}"
        name = errno.errorcode.get(err.errno, str(err.errno))
        return f"{err.strerror or err} ({name}{f', {err.filename}' if err.filename else ''})"
    writer = "PyTorch's file writer" if isinstance(err, RuntimeError) else "safetensors"
    return f"{writer} failed, usually a full disk ({type(err).__name__}: {err})".replace("\n", " ")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _errors_of_every_rank(local: str | None) -> list[str]:
    """Every rank's error (None where it had none), gathered on all ranks; doubles as a barrier."""
    if not (dist.is_available() and dist.is_initialized()):
        return [local] if local else []
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    many = dist.get_world_size() > 1
    return [f"rank {r}: {e}" if many else e for r, e in enumerate(gathered) if e]


class EpochDataLoader(DataLoader):
    """A plain DataLoader whose ``set_epoch`` (called by the Trainer) reaches the dataset."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class Ov2Trainer(Trainer):
    """``Trainer`` with atomic checkpoints, a non-finite-loss stop and rank-split streaming data."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A model that does not declare it gets a per-batch mean; seeing **kwargs in its forward,
        # the Trainer would otherwise pass the count and multiply the loss by the world size.
        self.model_accepts_loss_kwargs = bool(getattr(self.model, "accepts_loss_kwargs", False))
        if self.model_accepts_loss_kwargs and self.args.world_size > 1 and not self.args.average_tokens_across_devices:
            raise ValueError("--average_tokens_across_devices false: the losses here are over the global batch and "
                             "need the token count of all ranks; leave it true (the default).")
        self._step_features: StepFeatures | None = None
        resumable = hasattr(self.train_dataset, "load_stream_state")
        self._streams = StreamTracker(self.args.dataloader_num_workers) if resumable else None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """``Trainer.train``; a resumable stream continues from the checkpoint's saved position."""
        if self.args.should_save:
            clean_staging(self.args.output_dir)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = newest_intact_checkpoint(self.args.output_dir)[0]
        if resume_from_checkpoint and self._streams is not None:
            state = read_stream_state(resume_from_checkpoint, self.args.process_index, self.args.world_size,
                                      self.args.dataloader_num_workers)
            if state is not None:
                self.train_dataset.load_stream_state(state)
                self._streams.restore(state)
                self.args.ignore_data_skip = True  # ours replaces the Trainer's re-reading of the skipped batches
        result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self._streams is not None:  # the loader's workers have stopped: their count files are final
            write_final_counts(self._streams, self.train_dataset, self.args.process_index)
        return result

    def get_train_dataloader(self) -> DataLoader:
        if not isinstance(self.train_dataset, IterableDataset):
            return super().get_train_dataloader()
        workers = self.args.dataloader_num_workers
        return EpochDataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            # Its own generator: starting the workers draws their base seed from it, not from the global
            # generator, which a resumed run has just restored (token dropping must continue as if uninterrupted).
            generator=torch.Generator().manual_seed(self.args.seed),
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's micro-batches of one optimizer step; for a contrastive objective under
        accumulation also their features without gradient (``StepFeatures``, open_clip's ``--accum-freq``):
        one extra forward pass per micro-batch buys the whole step's negatives for each of them."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_features = None
        if len(batch_samples) > 1 and num_items_in_batch is not None and hasattr(self.model, "contrastive_features"):
            images, texts = [], []
            with self.compute_loss_context_manager():
                for batch in batch_samples:
                    inputs = self._prepare_inputs({k: batch[k] for k in ("pixel_values", "input_ids", "text_ids") if k in batch})
                    image, text = self.model.contrastive_features(**inputs)
                    images.append(image)
                    texts.append(text)
            self._step_features = StepFeatures(images, texts)
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = self._step_features if model.training else None
        if step is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        result = super().compute_loss(model, {**inputs, "step_features": step}, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        step.index += 1  # the Trainer runs the step's micro-batches in the order get_batch_samples returned them
        return result

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        position = inputs.pop(STATE_KEY, None)
        if position is not None and self._streams is not None:
            self._streams.update(position)
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss.detach().float())).float().reshape(())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad)  # every rank stops together, or the others would hang in the next all-reduce
        if bad.item() > 0:  # one host sync per step (the Trainer's NaN filter already syncs there too)
            last = newest_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"the training loss became non-finite ({loss.item()}) at step {self.state.global_step + 1}; "
                f"stopped before applying it. Last good checkpoint: {last or 'none yet'}. "
                "Lower --learning_rate, raise --warmup_steps, or use --bf16 instead of --fp16, then resume from it."
            )
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        final_root = Path(self._get_output_dir(trial=trial))
        staging_root = final_root / STAGING
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of a save that was killed
        _barrier()
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging_dir = staging_root
        try:
            error = _written(lambda: self._write_parts(model, trial, staging_root / name))
        finally:
            self._staging_dir = None
        errors = _errors_of_every_rank(error)  # every rank has written its part (DeepSpeed shards, rng_state_{rank}.pth)
        if not errors and self.args.should_save:
            error = _written(lambda: self._publish(staging_root / name, final_root / name))
        errors = errors or _errors_of_every_rank(error)
        if errors:
            self._stop_after_failed_save(name, final_root, staging_root, errors[0])
        if self.args.should_save:
            self._rotate(final_root)
        _barrier()

    def _write_parts(self, model, trial, folder: Path) -> None:
        super()._save_checkpoint(model, trial)  # everything lands in .staging/checkpoint-N
        if self._streams is not None:
            self._streams.save(folder, self.args.process_index, self.args.world_size)

    def _publish(self, staged: Path, target: Path) -> None:
        """Manifest, then the rename into place (main process; every rank has written its files)."""
        write_manifest(staged, self.state.global_step)
        if target.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(target)
        os.replace(staged, target)
        _fsync_dir(target.parent)
        shutil.rmtree(staged.parent, ignore_errors=True)

    def _stop_after_failed_save(self, name: str, final_root: Path, staging_root: Path, error: str) -> None:
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
        _barrier()
        last = newest_complete_checkpoint(final_root)
        try:
            free = f"{shutil.disk_usage(final_root).free / 2**20:.0f} MiB free there now"
        except OSError:
            free = "free space unknown"
        then = ("then resume with --resume_from_checkpoint latest (the same command otherwise)" if last else
                "then rerun (there is nothing to resume from yet)")
        raise CheckpointWriteError(
            f"could not write {name} in {final_root}: {error}; the partial checkpoint was removed ({free}). "
            f"Last complete checkpoint: {last or 'none yet'}. Free space (or lower --save_total_limit, or use "
            f"another --output_dir), {then}."
        )

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_dir", None)
        return str(staging) if staging is not None else super()._get_output_dir(trial=trial)

    def _rotate(self, run_dir: Path) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=False,
        )


def _written(write) -> str | None:
    """Run ``write()``; a write failure (``is_write_failure``) comes back as its description, anything else raises."""
    try:
        write()
    except Exception as err:
        if not is_write_failure(err):
            raise
        return _describe_write_failure(err)
    return None


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (POSIX: the directory entry lives in the parent's data)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
