"""``ov2 llava-train``: LLaVA-1.5's training stages for HF LLaVA, LLaVA-NeXT and LLaVA-OneVision (``--arch``)
with an OpenVision 2 tower.

- stage 1, projector alignment (``--tune_mm_mlp_adapter``): captions, only the projector learns;
- stage 2, instruction tuning: the language model (fully, or LoRA with ``--lora_enable``) and
  the projector learn, the projector at its own ``--mm_projector_lr``;
- downstream LoRA: the same stage 2 run started from any saved LLaVA folder.
The tower is frozen unless ``--unfreeze_mm_vision_tower`` (then at ``--mm_vision_tower_lr``).
Flags keep LLaVA's names so its launch scripts translate line by line. A plain HF ``Trainer``
does the work; the subclass only builds the learning-rate groups.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from ..data.bad_samples import COUNTS_FOLDER, BadSampleCounter, BadSampleLimitExceeded, collect_bad_samples
from ..deepspeed_helpers import start_deepspeed, whole_weights
from ..setup_deadline import distributed_setup_deadline
from .archs import check_arch, parse_pinpoints
from .build import IMAGE_TOKEN, build_llava, load_llava, save_llava
from .data import (
    RECORD_REASONS,
    TEXT_ONLY,
    ConversationCollator,
    LlavaConversations,
    SkippedRecords,
    dummy_image_inputs,
)

logger = logging.getLogger(__name__)

LM_LINEAR = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
PROJECTOR = "multi_modal_projector"
TOWER = "vision_tower"
NEWLINE = "image_newline"  # LLaVA-NeXT / OneVision: the learnt end-of-row embedding, trained with the projector


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved LLaVA folder to continue from (stage 2, downstream LoRA)."}
    )
    vision_tower: str | None = field(
        default=None, metadata={"help": "OpenVision 2 folder, for a new model (also 'ov2:<folder>')."}
    )
    language_model: str | None = field(default=None, metadata={"help": "HF causal LM folder, for a new model."})
    arch: str | None = field(default=None, metadata={
        "help": "LLaVA family of a new model: llava (LLaVA-1.5, the default), llava_next, llava_onevision, "
                "llava_next_video (anyres tiles); a saved folder keeps its own."})
    image_grid_pinpoints: str | None = field(default=None, metadata={
        "help": "Anyres tile layouts of a new model, HEIGHTxWIDTH pixels, multiples of the tower's size."})
    mm_projector_type: str = field(default="mlp2x_gelu")
    mm_vision_select_layer: int = field(default=-2)
    mm_vision_select_feature: str = field(default="patch", metadata={"help": "patch (drop CLS) or cls_patch."})
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "projector.safetensors of a stage-1 run."}
    )


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "LLaVA conversation JSON."})
    image_folder: str | None = field(
        default=None, metadata={"help": "Images are relative to this (default: the JSON's folder)."}
    )
    version: str = field(default="chat", metadata={"help": "plain (stage 1) or chat (USER:/ASSISTANT: turns)."})
    image_aspect_ratio: str = field(default="square", metadata={"help": "'pad' pads to a square first, as LLaVA-1.5."})
    max_bad_fraction: float = field(default=0.25, metadata={
        "help": "Stop when more than this share of the records (malformed) or of the images read (missing, corrupt) is broken."})


@dataclass
class LlavaTrainingArguments(TrainingArguments):
    output_dir: str = field(default="runs/llava")
    model_max_length: int = field(default=2048)
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Stage 1: train the projector only."})
    freeze_language_model: bool = field(default=False, metadata={"help": "Train projector (+ tower if unfrozen) only."})
    unfreeze_mm_vision_tower: bool = field(default=False)
    mm_vision_tower_lr: float | None = field(default=None)
    mm_projector_lr: float | None = field(default=None)
    lora_enable: bool = field(default=False)
    lora_r: int = field(default=128)
    lora_alpha: int = field(default=256)
    lora_dropout: float = field(default=0.05)
    lora_target: str = field(
        default=LM_LINEAR, metadata={"help": "'|'-joined module names, in the language model only."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Also write the merged model (adapters are always saved alone)."}
    )
    report_to: str | None = field(default="none")
    remove_unused_columns: bool = field(default=False)
    logging_steps: float = field(default=10)
    save_strategy: str = field(default="no")


def load_or_build(m: ModelArguments, t: LlavaTrainingArguments):
    """A saved LLaVA folder, or a new one from a tower and a language model."""
    if m.model_name_or_path:
        model, processor = load_llava(m.model_name_or_path)
        if m.arch and check_arch(m.arch).name != model.config.model_type:
            raise ValueError(f"--arch {m.arch} but {m.model_name_or_path!r} is a {model.config.model_type} model; "
                             "drop --arch (a saved folder keeps its family) or start from --vision_tower.")
        return model, processor
    if not (m.vision_tower and m.language_model):
        raise ValueError("Pass --model_name_or_path (a LLaVA folder) or both --vision_tower and --language_model.")
    if is_deepspeed_zero3_enabled():
        # the parts load already partitioned under ZeRO-3, and a partitioned part cannot be copied into a new model
        raise ValueError(
            "A new LLaVA model cannot be assembled under ZeRO-3. Run stage 1 with integration/deepspeed/zero2.json "
            "(as LLaVA-1.5 does), or build the model first with 'ov2 llava-build' and pass --model_name_or_path."
        )
    tower = m.vision_tower.removeprefix("ov2:")
    strategy = {"patch": "default", "cls_patch": "full"}.get(m.mm_vision_select_feature)
    if strategy is None:
        raise ValueError(f"--mm_vision_select_feature {m.mm_vision_select_feature!r}: use 'patch' or 'cls_patch'.")
    model, processor = build_llava(
        tower,
        m.language_model,
        projector=m.mm_projector_type,
        vision_feature_layer=m.mm_vision_select_layer,
        vision_feature_select_strategy=strategy,
        arch=m.arch or "llava",
        image_grid_pinpoints=parse_pinpoints(m.image_grid_pinpoints),
    )
    if m.pretrain_mm_mlp_adapter:
        from safetensors.torch import load_file

        weights = load_file(m.pretrain_mm_mlp_adapter)
        if NEWLINE in weights and hasattr(model.model, NEWLINE):
            model.model.image_newline.data.copy_(weights.pop(NEWLINE))
        model.model.multi_modal_projector.load_state_dict(weights)
    return model, processor


def set_trainable(model, t: LlavaTrainingArguments):
    """Freeze per stage; with LoRA wrap the language model's linear layers (projector saved with the adapter)."""
    model.requires_grad_(False)
    getattr(model.model, PROJECTOR).requires_grad_(True)
    if hasattr(model.model, NEWLINE):  # peft below freezes it again: LoRA runs keep stage 1's newline
        getattr(model.model, NEWLINE).requires_grad_(True)
    if t.unfreeze_mm_vision_tower:
        getattr(model.model, TOWER).requires_grad_(True)
    if t.tune_mm_mlp_adapter or t.freeze_language_model:
        return model
    if not t.lora_enable:
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=t.lora_r,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        target_modules=rf".*language_model.*\.({t.lora_target})",  # never the tower's or projector's layers
        modules_to_save=[PROJECTOR] + ([TOWER] if t.unfreeze_mm_vision_tower else []),
    )
    return get_peft_model(model, config)


class LlavaTrainer(Trainer):
    """Trainer whose optimiser gives the projector and the tower their own learning rates, and which
    counts the samples it trains on and the unreadable images the dataset skipped (``bad_samples``)."""

    def __init__(self, *args, bad_samples: BadSampleCounter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bad_samples = bad_samples

    def training_step(self, model, inputs, num_items_in_batch=None):
        skipped = inputs.pop("bad_samples", ())
        if self.bad_samples is not None:  # counted here, in the trainer's process: workers share no memory
            for _ in range(len(inputs["input_ids"])):
                self.bad_samples.add_good()
            for reason, where in skipped:
                self.bad_samples.add_bad(reason, where)
        return super().training_step(model, inputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        rates = {PROJECTOR: self.args.mm_projector_lr, NEWLINE: self.args.mm_projector_lr,
                 TOWER: self.args.mm_vision_tower_lr}
        groups: dict[tuple, list] = {}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            part = next((k for k in rates if k in name and rates[k] is not None), None)
            lr = rates[part] if part else self.args.learning_rate
            groups.setdefault((lr, name in decay), []).append(p)
        params = [
            {"params": ps, "lr": lr, "weight_decay": self.args.weight_decay if wd else 0.0}
            for (lr, wd), ps in groups.items()
        ]
        optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        optim_kwargs.pop("lr", None)
        self.optimizer = optim_cls(params, lr=self.args.learning_rate, **optim_kwargs)
        return self.optimizer


def save_outputs(model, processor, t: LlavaTrainingArguments) -> Path:
    """LoRA: adapter (+ projector) alone in output_dir, merged model in output_dir/merged if asked.
    Otherwise a complete LLaVA folder. Always projector.safetensors for a later stage."""
    from safetensors.torch import save_file

    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if t.lora_enable:
        model.save_pretrained(out)
        processor.save_pretrained(out)
        model = model.merge_and_unload()
        if t.merge_lora:
            save_llava(model, processor, out / "merged")
    else:
        save_llava(model, processor, out)
    projector = dict(getattr(model.model, PROJECTOR).state_dict())
    if hasattr(model.model, NEWLINE):
        projector[NEWLINE] = getattr(model.model, NEWLINE).detach()
    save_file({k: v.contiguous() for k, v in projector.items()}, out / "projector.safetensors")
    return out


def make_data(d: DataArguments, t: LlavaTrainingArguments, model, processor):
    """The dataset (malformed records already dropped and counted) and its collator."""
    image_folder = d.image_folder or str(Path(d.data_path).parent)
    arch = check_arch(model.config.model_type)
    dataset = LlavaConversations(
        d.data_path,
        image_folder,
        processor,
        template=d.version,
        max_length=t.model_max_length,
        pad_square=d.image_aspect_ratio == "pad",
        max_bad_fraction=d.max_bad_fraction,
        arch=arch.name,
    )
    collator = ConversationCollator(
        processor.tokenizer.pad_token_id,
        image_token_id=processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        dummy=dummy_image_inputs(dataset) if t.world_size > 1 else None,  # every rank runs the tower and projector each step
        batch_num_images=arch.multi_image,
    )
    return dataset, collator



def bad_sample_report(out: Path, skipped: SkippedRecords) -> dict:
    """Pretraining's ``bad_samples`` summary (images, summed over the ranks' files) plus the records
    dropped when the file was read; ``skipped_text_only`` counts stage 1's text-only records."""
    report = collect_bad_samples(out)
    for reason in RECORD_REASONS:
        report["by_reason"][reason] = report["by_reason"].get(reason, 0) + skipped.counts[reason]
        report["examples"].setdefault(reason, []).extend(skipped.examples.get(reason, []))
    report["examples"] = {k: v[:5] for k, v in report["examples"].items() if v}
    report["bad_samples"] += skipped.bad
    total = report["good_samples"] + report["bad_samples"]
    report["bad_fraction"] = report["bad_samples"] / total if total else 0.0
    report["records"] = skipped.total
    report["skipped_text_only"] = skipped.counts[TEXT_ONLY]
    return report


def check_bad_fraction(report: dict, max_bad_fraction: float, t: LlavaTrainingArguments, out: Path) -> None:
    """Stop when the whole run's broken share (all ranks) is above the limit; rank 0 writes why first."""
    if report["bad_fraction"] <= max_bad_fraction:
        return
    detail = ", ".join(f"{r}: {n}" for r, n in report["by_reason"].items() if n)
    message = (
        f"{report['bad_samples']} of {report['good_samples'] + report['bad_samples']} samples were broken ({detail}; "
        f"e.g. {report['examples']}), above --max_bad_fraction {max_bad_fraction}; nothing was saved. Check "
        "--data_path and --image_folder, or raise --max_bad_fraction if this data is known to be this noisy."
    )
    if t.process_index == 0:
        (out / "report.json").write_text(json.dumps({"status": f"stopped: {message}", "bad_samples": report}, indent=2))
    raise BadSampleLimitExceeded(message)


def run_training(m: ModelArguments, d: DataArguments, t: LlavaTrainingArguments) -> dict:
    if t.deepspeed:
        start_deepspeed()
    set_seed(t.seed)  # before the projector and the LoRA weights are drawn (Trainer seeds only once it starts)
    model, processor = load_or_build(m, t)
    if t.tune_mm_mlp_adapter and t.lora_enable:
        raise ValueError("--tune_mm_mlp_adapter (stage 1) trains the projector only; drop --lora_enable.")
    dataset, collator = make_data(d, t, model, processor)
    out = Path(t.output_dir)
    with t.main_process_first(local=False, desc="clearing the last run's bad-sample counts"):
        if t.process_index == 0:
            shutil.rmtree(out / COUNTS_FOLDER, ignore_errors=True)
    counter = BadSampleCounter(out, f"rank{t.process_index}", d.max_bad_fraction)
    if t.lora_enable and m.model_name_or_path:  # an adapter names its base folder: absolute, so it loads from anywhere
        model.config._name_or_path = str(Path(m.model_name_or_path).resolve())
    elif t.lora_enable and t.process_index == 0:  # a freshly built base must exist on disk for it
        base = save_llava(model, processor, out / "base")
        model.config._name_or_path = str(base.resolve())
    set_seed(t.seed)  # LoRA's weights from the seed alone: loading under ZeRO-3 draws OneVision's image_newline first
    model = set_trainable(model, t)
    if t.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings must still pass gradients to checkpointed blocks
    trainer = LlavaTrainer(model=model, args=t, train_dataset=dataset, data_collator=collator, bad_samples=counter)
    result = trainer.train(resume_from_checkpoint=t.resume_from_checkpoint)
    counter.flush()
    trainer.accelerator.wait_for_everyone()  # every rank's counts are on disk before they are summed
    bad_samples = bad_sample_report(out, dataset.skipped)
    check_bad_fraction(bad_samples, d.max_bad_fraction, t, out)  # the same decision on every rank
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics = {
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "trainable_parameters": trainable,
        "samples": len(dataset),
    }
    with whole_weights(trainer.model):
        if trainer.is_world_process_zero():
            out = save_outputs(trainer.model, processor, t)
            metrics["bad_samples"] = bad_samples
            history = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
            (out / "report.json").write_text(json.dumps({**metrics, "loss_history": history}, indent=2))
    return metrics


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, LlavaTrainingArguments))
    with distributed_setup_deadline(argv):  # parsing starts the process group
        return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    m, d, t = parse_args(argv)
    if not d.data_path:
        raise ValueError(
            "--data_path is required: a LLaVA conversation JSON (ov2_plugin.data.instructions writes built-in ones)."
        )
    return run_training(m, d, t)
