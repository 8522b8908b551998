"""Captioning-only pretraining of an OpenVision 2 encoder with the Hugging Face Trainer.

The model computes its own loss, so the plain ``Trainer`` does the loop, AdamW, the cosine
schedule, gradient accumulation, mixed precision, DDP/DeepSpeed and checkpointing; this file
only chooses the release's defaults, builds the data and writes the final report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from .configuration import Ov2Config
from .data.captions import CaptionCollator, SceneCaptions
from .data.transforms import eval_transform
from .evaluation.captioning import evaluate_captions
from .image_processing import make_image_processor
from .modeling_captioner import Ov2ForCaptioning
from .tokenization import build_caption_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    preset: str = field(default="tiny", metadata={"help": "tiny, S/16, B/16, L/14, So400M/14, H/14 or g/14."})
    keep_ratio: float = field(default=0.35, metadata={"help": "Share of visual tokens the decoder sees in training."})
    image_size: int | None = field(default=None, metadata={"help": "Training resolution; the preset's by default."})
    init_from: str | None = field(default=None, metadata={"help": "Start from this Ov2ForCaptioning folder."})


@dataclass
class DataArguments:
    data: str = field(default="scenes", metadata={"help": "'scenes': the built-in captioned scenes."})
    train_samples: int = field(default=20000, metadata={"help": "Scenes per epoch (built-in data)."})
    scene_seed: int = field(default=0, metadata={"help": "Seed of the training scene stream."})
    eval_samples: int = field(default=256, metadata={"help": "Held-out scenes for the final report (0: none)."})
    eval_seed: int = field(default=1, metadata={"help": "Seed of the held-out scene stream."})


@dataclass
class PretrainArguments(TrainingArguments):
    """``TrainingArguments`` with the release's optimiser defaults (AdamW b2 0.95, wd 0.2, cosine)."""

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


def build_model(args: ModelArguments) -> Ov2ForCaptioning:
    if args.init_from:
        return Ov2ForCaptioning.from_pretrained(args.init_from)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    return Ov2ForCaptioning(Ov2Config.from_preset(args.preset, keep_ratio=args.keep_ratio, **overrides))


def build_dataset(args: DataArguments, image_size: int):
    if args.data != "scenes":
        raise ValueError(f"Unknown data source {args.data!r}; use 'scenes' for the built-in captioned scenes.")
    return SceneCaptions(args.train_samples, image_size, eval_transform(image_size), seed=args.scene_seed)


def write_report(trainer: Trainer, metrics: dict, out: Path) -> None:
    """``report.json`` (metrics + loss history) and ``loss.png`` in the output folder."""
    history = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    (out / "report.json").write_text(json.dumps({**metrics, "loss_history": history}, indent=2))
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*history))
    ax.set(xlabel="step", ylabel="caption loss", title="OpenVision 2 pretraining", yscale="log")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)


def run_pretraining(model_args: ModelArguments, data_args: DataArguments, train_args: PretrainArguments) -> dict:
    """Train, save model + tokenizer + image processor to ``output_dir``, evaluate, report."""
    model = build_model(model_args)
    image_size = model.config.vision_config.image_size
    tokenizer = build_caption_tokenizer(model.config.decoder_config.max_length)
    trainer = Trainer(
        model=model,
        args=train_args,
        train_dataset=build_dataset(data_args, image_size),
        data_collator=CaptionCollator(tokenizer),
    )
    result = trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime")}
    if trainer.is_world_process_zero():
        out = Path(train_args.output_dir)
        trainer.save_model(str(out))
        tokenizer.save_pretrained(out)
        make_image_processor(model.config.vision_config).save_pretrained(out)
        if data_args.eval_samples:
            metrics |= evaluate_captions(trainer.model, tokenizer, data_args.eval_samples, seed=data_args.eval_seed)
        write_report(trainer, metrics, out)
        logger.info("report: %s", json.dumps(metrics))
    return metrics


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, PretrainArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return run_pretraining(*parse_args(argv))
