"""Captioning-only pretraining of an OpenVision 2 encoder with the Hugging Face Trainer.

The model computes its own loss, so the ``Trainer`` does the loop, AdamW, the cosine
schedule, gradient accumulation, mixed precision, DDP (``torchrun``) and DeepSpeed
(``--deepspeed integration/deepspeed/zero2.json``); ``Ov2Trainer`` adds atomic checkpoints and
a non-finite-loss stop. This file chooses the release's defaults, builds the data (built-in
scenes, WebDataset shards, LLaVA JSON, an image folder), runs the resolution stages of a
recipe one after the other and writes the final report.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed

from .activation_checkpointing import MODES as CHECKPOINTING_MODES
from .atomic_json import write_json_atomically
from .checkpoint_manifest import verify_checkpoint
from .configuration import Ov2Config
from .data.bad_samples import COUNTS_FOLDER, collect_bad_samples
from .data.captions import CaptionCollator, SceneCaptions
from .data.transforms import center_crop_transform, eval_transform, train_transform
from .deepspeed_helpers import loading_in_one_process, start_deepspeed, whole_weights
from .devices import attention_kernels, peak_memory_bytes
from .image_processing import make_image_processor
from .modeling_captioner import Ov2ForCaptioning
from .recipes import Stage, load_recipe
from .setup_deadline import distributed_setup_deadline
from .tokenization import build_caption_tokenizer
from .trainer import (
    CheckpointError,
    DamagedCheckpointError,
    NonFiniteLossError,
    Ov2Trainer,
    newest_intact_checkpoint,
    set_damaged_aside,
)

logger = logging.getLogger(__name__)

DATA_SOURCES = ("scenes", "webdataset", "json", "folder", "hf")
STAGE_DONE = "stage_done.json"


@dataclass
class ModelArguments:
    preset: str = field(default="tiny", metadata={"help": "tiny, S/16, B/16, L/14, So400M/14, H/14, g/14, or a release geometry such as L/14-336 or So400M/14-384."})
    keep_ratio: float = field(default=0.35, metadata={"help": "Share of visual tokens the decoder sees in training."})
    image_size: int | None = field(default=None, metadata={"help": "Training resolution; the preset's by default."})
    init_from: str | None = field(default=None, metadata={"help": "Start from this Ov2ForCaptioning folder."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Preset fields to change, as in transformers' run_clm: 'hidden_size=128,num_hidden_layers=4,"
                "decoder_hidden_size=128' (decoder fields take the 'decoder_' prefix)."})
    objective: str = field(default="caption", metadata={
        "help": "caption (OpenVision 2), or a baseline on the same ViT, data and trainer: openvision (OpenVision 1: "
                "text encoder + contrastive + captioning on all tokens), clip (contrastive only, sigmoid loss), "
                "coca (open_clip's CoCa). Baselines save their encoder as the output folder's Ov2VisionModel."})


def parse_config_overrides(text: str | None) -> dict[str, int | float | str]:
    """'a=1,b=0.5' -> {'a': 1, 'b': 0.5}; a clear error for a malformed item."""
    overrides: dict[str, int | float | str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config_overrides item {item!r} is not 'name=value'; write e.g. 'hidden_size=128,num_hidden_layers=4'.")
        for cast in (int, float):
            try:
                overrides[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[key] = value
    return overrides


@dataclass
class DataArguments:
    data: str = field(default="scenes", metadata={"help": f"Data source: {', '.join(DATA_SOURCES)}."})
    recipe: str | None = field(default=None, metadata={
        "help": "A recipe (YAML/JSON file, or a built-in name such as 'smoke' or 'release-L14'): model, data, "
                "optimiser and resolution stages. Its values replace the flags' defaults."})
    train_samples: int = field(default=20000, metadata={"help": "Scenes per epoch (built-in data)."})
    scene_seed: int = field(default=0, metadata={"help": "Seed of the training scene stream."})
    scene_kind: str = field(default="shapes", metadata={
        "help": "Built-in data: shapes (the original scenes), reading (1-3 words from ~8,400 training words, "
                "data/reading.py), mixed (half each), or reading-cpu / mixed-cpu (the CPU reading curriculum: "
                "256 words of 3-4 letters, larger letters)."})
    eval_samples: int = field(default=256, metadata={"help": "Held-out scenes for the final report (0: none)."})
    eval_seed: int = field(default=1, metadata={"help": "Seed of the held-out scene stream."})
    train_shards: str | None = field(default=None, metadata={
        "help": "webdataset: tar shards, e.g. 'data/{00000..01023}.tar' (several patterns joined by '::'; URLs work)."})
    caption_field: str = field(default="txt", metadata={
        "help": "webdataset: 'txt' (the .txt file) or 'json:KEY' (a key of the .json file, e.g. json:re_caption)."})
    json_path: str | None = field(default=None, metadata={"help": "json: LLaVA-style .json/.jsonl caption file."})
    image_root: str | None = field(default=None, metadata={"help": "json: folder the 'image' paths are relative to."})
    caption_key: str | None = field(default=None, metadata={
        "help": "json: record key holding the caption (default: caption, text, else the first gpt turn)."})
    image_folder: str | None = field(default=None, metadata={"help": "folder: the image folder."})
    captions_file: str | None = field(default=None, metadata={
        "help": "folder: JSONL/CSV with file_name and caption columns (default: IMAGE_FOLDER/metadata.jsonl)."})
    hf_path: str | None = field(default=None, metadata={
        "help": "hf: a saved dataset folder (load_from_disk), or parquet/arrow/json/csv files (a file, folder or glob)."})
    hf_split: str = field(default="train", metadata={"help": "hf: the split to train on."})
    image_column: str = field(default="image", metadata={"help": "hf: column with the image (Image, bytes or path)."})
    caption_column: str | None = field(default=None, metadata={"help": "hf: caption column (default: caption, else text)."})
    hf_streaming: bool = field(default=False, metadata={
        "help": "hf: read data files as they are (split by file) instead of building the Arrow cache (split by row)."})
    shuffle_buffer: int = field(default=1000, metadata={"help": "webdataset: samples mixed within each worker."})
    augment: str = field(default="auto", metadata={
        "help": "'inception' (random resized crop, colour jitter, grayscale), 'none' (squash resize), "
                "'center_crop' (resize the shorter side, centre square), "
                "'auto' (none for the built-in scenes, whose captions name colours and places; inception otherwise)."})
    min_area: float = field(default=0.4, metadata={"help": "Random resized crop: smallest share of the image kept."})
    color_jitter: float = field(default=0.4, metadata={"help": "Colour jitter strength (0: off)."})
    grayscale_p: float = field(default=0.2, metadata={"help": "Probability of random grayscale (0: off)."})
    max_bad_fraction: float = field(default=0.25, metadata={
        "help": "Stop when more than this share of the samples read is broken (corrupt, unreadable, no caption)."})
    reduced_jpeg_decoding: bool = field(default=True, metadata={
        "help": "Streamed data: decode each JPEG at the coarsest DCT scale (1/8, 1/4, 1/2) that still gives the "
                "augmentation's crop at least the training resolution's pixels; same crops and random draws as the "
                "full decode (false: always decode the whole image)."})


@dataclass
class PretrainArguments(TrainingArguments):
    """``TrainingArguments`` with the release's optimiser defaults (AdamW b2 0.95, wd 0.2, cosine).

    ``--resume_from_checkpoint latest`` resumes from the newest intact checkpoint (and skips
    finished resolution stages); a path resumes from that checkpoint.
    """

    output_dir: str = field(default="runs/ov2-pretrain")
    learning_rate: float = 1e-3
    adam_beta2: float = 0.95
    weight_decay: float = 0.2
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05
    per_device_train_batch_size: int = 64
    num_train_epochs: float = 1.0
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int | None = 2
    report_to: str | None = "none"
    remove_unused_columns: bool = False
    dataloader_num_workers: int = 1
    unmasked_tuning: float = field(default=0.0, metadata={
        "help": "Share of the final steps in which the decoder sees every visual token (FLIP's unmasked tuning; 0: off)."})
    checkpointing: str | None = field(default=None, metadata={
        "help": "Activation checkpointing: none, encoder (the ViT's blocks, as big_vision's remat), decoder, or all "
                "(every block; what --gradient_checkpointing true means without this flag)."})
    checkpoint_every: int = field(default=1, metadata={
        "help": "With checkpointing: recompute only every k-th block of each stack (1: every block)."})


def checkpointing_arguments(model: Ov2ForCaptioning, args: PretrainArguments) -> str:
    """Map ``--checkpointing``/``--checkpoint_every`` onto the Trainer's own activation checkpointing.

    The Trainer calls ``model.activation_checkpointing_enable``, which checkpoints the blocks of
    ``model.checkpointing_scope``. Returns the mode in effect.
    """
    mode = args.checkpointing or ("all" if args.activation_checkpointing else "none")
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"--checkpointing {mode!r} is unknown; use one of {', '.join(CHECKPOINTING_MODES)}.")
    if mode == "none" and args.activation_checkpointing:
        raise ValueError("--checkpointing none contradicts --gradient_checkpointing true; drop one of them.")
    model.checkpointing_scope = "all" if mode == "none" else mode
    args.activation_checkpointing = args.gradient_checkpointing = mode != "none"
    if args.checkpoint_every != 1:
        args.activation_checkpointing_kwargs = {**(args.activation_checkpointing_kwargs or {}),
                                                "every_n_layers": args.checkpoint_every}
    return mode


def build_model(args: ModelArguments) -> Ov2ForCaptioning:
    """A new model from a preset, or ``init_from``'s weights; ``image_size`` sets the training resolution.

    The position embedding is a sin-cos table computed for the input's grid, so a model
    trained at one resolution runs at another with no weight change.
    """
    if args.init_from and args.objective != "caption":
        from .baselines import build_objective_model

        return build_objective_model(args.objective, None, init_from=args.init_from)
    if args.init_from:
        model = Ov2ForCaptioning.from_pretrained(args.init_from)
        if args.image_size:
            model.config.vision_config.image_size = args.image_size
        return model
    overrides = parse_config_overrides(args.config_overrides)
    if args.image_size:
        overrides["image_size"] = args.image_size
    config = Ov2Config.from_preset(args.preset, keep_ratio=args.keep_ratio, **overrides)
    if args.objective != "caption":  # baselines live outside the OpenVision 2 model files
        from .baselines import build_objective_model

        return build_objective_model(args.objective, config)
    return Ov2ForCaptioning(config)


def build_transform(args: DataArguments, image_size: int):
    augment = args.augment if args.augment != "auto" else ("none" if args.data == "scenes" else "inception")
    if augment == "none":
        return eval_transform(image_size)
    if augment == "center_crop":
        return center_crop_transform(image_size)
    if augment == "inception":
        return train_transform(image_size, args.min_area, args.color_jitter, args.grayscale_p)
    raise ValueError(f"Unknown --augment {args.augment!r}; use auto, inception, none or center_crop.")


def build_dataset(args: DataArguments, image_size: int, train_args: TrainingArguments | None = None,
                  report_dir: str | None = None):
    """The training data at ``image_size``; streamed sources are split by rank (from ``train_args``)."""
    transform = build_transform(args, image_size)
    if args.data == "scenes":
        return SceneCaptions(args.train_samples, image_size, transform, seed=args.scene_seed, kind=args.scene_kind)
    if args.data not in DATA_SOURCES:
        raise ValueError(f"Unknown data source {args.data!r}; use one of {', '.join(DATA_SOURCES)}.")
    common = dict(
        rank=train_args.process_index if train_args else 0,
        world_size=train_args.world_size if train_args else 1,
        seed=(train_args.data_seed if train_args.data_seed is not None else train_args.seed) if train_args else 0,
        report_dir=report_dir,
        max_bad_fraction=args.max_bad_fraction,
        reduced_decoding=args.reduced_jpeg_decoding,
    )
    if args.data == "webdataset":
        from .data.webdataset_source import WebDatasetCaptions

        if not args.train_shards:
            raise ValueError("--data webdataset needs --train_shards, e.g. 'shards/{00000..00099}.tar'.")
        return WebDatasetCaptions(args.train_shards, transform, caption_field=args.caption_field,
                                  shuffle_buffer=args.shuffle_buffer, **common)
    if args.data == "json":
        from .data.json_source import JsonCaptions

        if not args.json_path:
            raise ValueError("--data json needs --json_path (a LLaVA-style .json or .jsonl) and usually --image_root.")
        return JsonCaptions(args.json_path, args.image_root, transform, caption_key=args.caption_key, **common)
    if args.data == "hf":
        from .data.hf_source import HfCaptions

        if not args.hf_path:
            raise ValueError("--data hf needs --hf_path (a saved dataset folder, or parquet/arrow/json/csv files).")
        return HfCaptions(args.hf_path, transform, image_column=args.image_column, caption_column=args.caption_column,
                          split=args.hf_split, streaming=args.hf_streaming, **common)
    from .data.folder_source import FolderCaptions

    if not args.image_folder:
        raise ValueError("--data folder needs --image_folder (and --captions_file unless it holds metadata.jsonl).")
    return FolderCaptions(args.image_folder, args.captions_file, transform, **common)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, to show in the report which weights a stage started from."""
    h = hashlib.sha256()
    with whole_weights(model):  # every rank must call it under ZeRO-3
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def plot_loss(history: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*history))
    ax.set(xlabel="step", ylabel="caption loss", title="OpenVision 2 pretraining", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(trainer: Trainer | None, metrics: dict, out: Path, history: list | None = None) -> None:
    """``report.json`` (metrics + loss history) and ``loss.png`` in the output folder."""
    if history is None:
        history = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h] if trainer else []
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({**metrics, "loss_history": history}, indent=2))
    if history:
        plot_loss(history, out / "loss.png")


def resolve_resume(value: str | None, run_dir: Path, is_main: bool = True) -> str | None:
    """``latest``/``true``: the newest intact checkpoint in ``run_dir`` (None for a fresh start); a path: itself.

    ``latest`` passes over damaged checkpoints (``checkpoint_manifest.verify_checkpoint``) with one line
    each, and the main process sets them aside as ``checkpoint-N.damaged``; a damaged checkpoint named
    by path is refused (``DamagedCheckpointError``).
    """
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("latest", "true", "auto"):
        found, damaged = newest_intact_checkpoint(run_dir)
        for folder, problem in damaged if is_main else ():
            aside = set_damaged_aside(folder)
            logger.warning("%s is damaged (%s), set aside as %s; resuming from %s instead", folder, problem,
                           Path(aside).name, found or "nothing (a fresh start)")
        return found
    if not (Path(value) / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{value} is not a complete checkpoint folder; use --resume_from_checkpoint latest.")
    problem = verify_checkpoint(value)
    if problem is not None:
        raise DamagedCheckpointError(
            f"{value} is damaged ({problem}); resume from another checkpoint, or pass --resume_from_checkpoint latest "
            "to take the newest intact one.")
    return value


class UnmaskedTuning(TrainerCallback):
    """The last ``share`` of the steps train with every visual token (keep ratio 1.0).

    Why: the decoder trained on 35 % of the tokens is later run on all of them (captioning; the
    encoder inside LLaVA). On short runs that gap costs a lot of held-out accuracy, and a short
    unmasked finish closes it, as in FLIP (Li et al., 2023). The phase follows the global step,
    so a resumed run lands in the same one; the final model's config keeps the recipe's ratio.
    """

    def __init__(self, model: Ov2ForCaptioning, share: float) -> None:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"--unmasked_tuning {share} must be in [0, 1): the share of the final steps without token dropping.")
        self.model, self.share, self.keep_ratio = model, share, model.config.keep_ratio

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        unmasked = state.global_step >= state.max_steps * (1.0 - self.share)
        self.model.config.keep_ratio = 1.0 if unmasked else self.keep_ratio

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self.model.config.keep_ratio = self.keep_ratio


def stage_arguments(train_args: PretrainArguments, stage: Stage, run_dir: Path) -> PretrainArguments:
    """This stage's TrainingArguments: the run's, with the stage's overrides and step count."""
    args = copy.copy(train_args)
    args.output_dir = str(run_dir)
    for key, value in stage.train.items():
        setattr(args, key, value)
    if stage.samples:
        global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        args.max_steps = max(1, math.ceil(stage.samples / global_batch))
    return args


def train_stage(model: Ov2ForCaptioning, stage: Stage, data_args: DataArguments, train_args: PretrainArguments,
                tokenizer, run_dir: Path) -> tuple[Trainer, dict]:
    """Train one resolution stage in ``run_dir`` (checkpoints, bad-sample counts, stage weights)."""
    args = stage_arguments(train_args, stage, run_dir)
    resume = resolve_resume(train_args.resume_from_checkpoint, run_dir, is_main=args.process_index == 0)
    if resume is None:  # a fresh start: forget counts of an earlier run in this folder (own rank's only)
        for f in (run_dir / COUNTS_FOLDER).glob(f"*-rank{args.process_index}-*.json"):
            f.unlink()
    model.config.vision_config.image_size = stage.image_size
    checkpointing = checkpointing_arguments(model, args)
    start = weights_fingerprint(model)
    trainer = Ov2Trainer(
        model=model,
        args=args,
        train_dataset=build_dataset(data_args, stage.image_size, args, report_dir=str(run_dir)),
        data_collator=CaptionCollator(tokenizer),
        callbacks=[UnmaskedTuning(model, args.unmasked_tuning)] if args.unmasked_tuning else None,
    )
    with attention_kernels(args.device):
        result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(run_dir))  # every rank calls it: DeepSpeed gathers ZeRO-3 shards here
    trainer.accelerator.wait_for_everyone()  # rank 0 writes the file; the next stage loads it on every rank
    if args.deepspeed:  # accelerate allows one DeepSpeed setup per process; the next stage's Trainer makes its own
        AcceleratorState._reset_state()
    record = {
        "name": stage.name, "image_size": stage.image_size, "steps": trainer.state.global_step,
        "resumed_from": resume, "start_weights": start, "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "checkpointing": {"mode": checkpointing, "blocks": sum(
            bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules())},
        "peak_memory_bytes": peak_memory_bytes(args.device),
        "loss_history": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
    }
    return trainer, record


def run_pretraining(model_args: ModelArguments, data_args: DataArguments, train_args: PretrainArguments,
                    explicit: frozenset[str] = frozenset()) -> dict:
    """Train every stage, save model + tokenizer + image processor to ``output_dir``, evaluate, report.

    ``explicit``: flags given on the command line, which win over the recipe's values.
    """
    model_args, data_args, train_args, stages = load_recipe(data_args.recipe, model_args, data_args, train_args, explicit)
    if train_args.deepspeed:
        start_deepspeed()  # before any from_pretrained (``--init_from``, later stages) partitions weights
    out = Path(train_args.output_dir)
    tokenizer = build_caption_tokenizer(build_model_config_max_length(model_args))
    single = len(stages) == 1
    init_from, records, trainer = model_args.init_from, [], None
    for i, stage in enumerate(stages):
        run_dir = out if single else out / f"stage{i + 1}-{stage.name}"
        done = run_dir / STAGE_DONE
        if not single and train_args.resume_from_checkpoint and done.is_file():
            records.append(json.loads(done.read_text()) | {"skipped_as_done": True})
            init_from = str(run_dir)
            continue
        set_seed(train_args.seed)  # the Trainer seeds only after the model exists; initial weights need it too
        model = build_model(replace(model_args, init_from=init_from, image_size=stage.image_size or model_args.image_size))
        stage.image_size = model.config.vision_config.image_size
        try:
            trainer, record = train_stage(model, stage, data_args, train_args, tokenizer, run_dir)
        except NonFiniteLossError as err:
            if train_args.process_index == 0:
                write_report(None, {"status": f"stopped: {err}", "stages": records,
                                    "bad_samples": collect_bad_samples(run_dir)}, out, history=[])
            raise
        if trainer.is_world_process_zero():
            record["bad_samples"] = collect_bad_samples(run_dir)
            if not single:  # written whole or not at all, like the checkpoints
                write_json_atomically(done, record)
        records.append(record)
        init_from = str(run_dir)
    return finish(trainer, records, data_args, train_args, tokenizer, out, single)


def build_model_config_max_length(model_args: ModelArguments) -> int:
    if model_args.init_from:
        return Ov2Config.from_pretrained(model_args.init_from).decoder_config.max_length
    return Ov2Config.from_preset(model_args.preset).decoder_config.max_length


def finish(trainer: Trainer | None, records: list[dict], data_args: DataArguments, train_args: PretrainArguments,
           tokenizer, out: Path, single: bool) -> dict:
    """Rank 0 saves the final model folder, evaluates on held-out scenes and writes the report."""
    last = records[-1]
    metrics = {"train_loss": last["train_loss"], "train_runtime_s": last.get("train_runtime_s"), "status": "finished",
               "checkpointing": last.get("checkpointing"), "peak_memory_bytes": last.get("peak_memory_bytes")}
    if train_args.process_index != 0:
        return metrics
    if trainer is not None and single and not train_args.deepspeed:
        model = trainer.model  # already saved to ``out`` by train_stage
    else:  # the last stage's saved weights (whole, even under ZeRO-3)
        with loading_in_one_process(train_args):
            model = (type(trainer.model) if trainer is not None else Ov2ForCaptioning).from_pretrained(str(out if single else out / f"stage{len(records)}-{last['name']}"))
        if not single:
            model.save_pretrained(out)
    if getattr(model.config, "objective", "caption") != "caption":  # a baseline: out holds its encoder
        from .baselines import save_objective_outputs

        save_objective_outputs(model, out)
        metrics["objective"] = model.config.objective
    tokenizer.save_pretrained(out)
    make_image_processor(model.config.vision_config).save_pretrained(out)
    if isinstance(model, Ov2ForCaptioning):  # `ov2 caption`'s defaults: greedy that cannot loop (caption.LOOP_STOP)
        from .caption import save_generation_defaults

        save_generation_defaults(model, out)
    if data_args.data == "scenes" and data_args.eval_samples and isinstance(model, Ov2ForCaptioning):
        from .evaluation.captioning import evaluate_captions

        metrics |= evaluate_captions(model, tokenizer, data_args.eval_samples, seed=data_args.eval_seed)
    totals = [r.get("bad_samples") for r in records if r.get("bad_samples")]
    if data_args.data != "scenes":
        metrics["bad_samples"] = totals[0] if single and totals else {"per_stage": totals}
    if not single:
        metrics["stages"] = [{k: v for k, v in r.items() if k != "loss_history"} for r in records]
    history = [(h[0], h[1]) for r in records for h in r["loss_history"]] if single else [
        (sum(r["steps"] for r in records[:i]) + s, loss) for i, r in enumerate(records) for s, loss in r["loss_history"]
    ]
    write_report(None, metrics, out, history=history)
    logger.info("report: %s", json.dumps({k: v for k, v in metrics.items() if k != "stages"}))
    return metrics


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, PretrainArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainArguments))
    with distributed_setup_deadline(argv):  # parsing starts the process group
        return parser.parse_args_into_dataclasses(args=argv)


def explicit_flags(argv: list[str]) -> frozenset[str]:
    """Field names of the ``--flag`` / ``--flag=value`` items in ``argv``."""
    return frozenset(a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--"))


def main(argv: list[str] | None = None) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    argv = sys.argv[1:] if argv is None else argv
    return run_pretraining(*parse_args(argv), explicit=explicit_flags(argv))


__all__ = ["DataArguments", "ModelArguments", "PretrainArguments", "build_dataset", "build_model", "main",
           "run_pretraining"]


def run_as_script() -> None:
    """``python -m`` / ``torchrun -m``: a run stopped on purpose (a failed checkpoint write, a damaged checkpoint,
    a non-finite loss) ends with its one-line message from rank 0 and exit status 1, not a traceback per rank
    (``OV2_DEBUG=1`` shows the traceback)."""
    try:
        main()
    except (CheckpointError, NonFiniteLossError) as err:
        if os.environ.get("OV2_DEBUG"):
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"ov2 pretrain: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":  # `torchrun -m ov2_plugin.pretrain ...` and `python -m ov2_plugin.pretrain ...`
    run_as_script()
