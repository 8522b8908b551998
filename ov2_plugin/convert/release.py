"""Read an official OpenVision / OpenVision 2 release folder and write our Hugging Face format,
and the reverse export to the release (open_clip) layout.

A release folder holds ``open_clip_config.json`` and the encoder weights
(``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``); an OpenVision 2 release
with its caption decoder adds ``caption_decoder.safetensors`` + ``text_decoder_config.json``.
OpenVision 1 releases are whole CLIP models (``visual.`` prefix plus a text tower): we convert
the vision tower and report the rest as not converted.

Weights are read with ``torch.load(weights_only=True)`` or safetensors only: a checkpoint is
data, and a pickle that wants to run code is refused, never executed.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor

from ..configuration import Ov2Config, Ov2VisionConfig
from ..image_processing import make_image_processor
from ..loading import checkpoint_model_type, load_vision_model, resolve_model_path
from ..modeling_captioner import Ov2ForCaptioning
from ..modeling_vision import Ov2VisionModel
from . import open_clip_layout as layout

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
DECODER_CONFIG = "text_decoder_config.json"
DECODER_WEIGHTS = "caption_decoder.safetensors"
EXTRA_WEIGHTS = "open_clip_extra.safetensors"  # release tensors our model does not use (``proj``)
REPORT = "conversion_report.json"
RELEASE_FILES = "release"  # the release's own config files, kept by convert_release for the exact export
# Encoder config fields that must agree for a kept release config to still describe the model.
_VISION_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "patch_size",
                  "image_size", "hidden_act", "layer_norm_eps", "image_mean", "image_std")

# open_clip interpolation names -> PIL resample codes (what CLIPImageProcessor takes).
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}


@dataclass
class ConversionReport:
    """What a conversion did, printed by ``ov2 convert`` and saved beside the converted model."""

    source: str
    destination: str
    kind: str
    converted: int = 0
    kept_aside: list[str] = field(default_factory=list)
    not_converted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.kind}: {self.source} -> {self.destination}", f"  converted tensors: {self.converted}"]
        if self.kept_aside:
            lines.append(f"  kept aside (not used by our model, written back on export): {', '.join(self.kept_aside)}")
        if self.not_converted:
            lines.append(f"  not converted: {layout.list_keys(self.not_converted, 8)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def save(self, folder: Path) -> None:
        (folder / REPORT).write_text(json.dumps(asdict(self), indent=2) + "\n")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch ``.bin`` file, never running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        state: Any = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path.name} holds pickled Python objects besides tensors, and loading it would run code from the "
                f"file; it was refused (torch.load weights_only=True). Re-save the state dict as safetensors from a "
                f"trusted environment. Detail: {str(err).splitlines()[0]}"
            ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # open_clip training checkpoints
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path.name} is not a state dict (a mapping of names to tensors).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path.name} is not valid JSON ({err}); the release folder is damaged.") from err


RESIZE_MODES = ("squash", "shortest")


def release_image_processor(
    config: Ov2VisionConfig, preprocess_cfg: dict[str, Any] | None, resize_mode: str | None = None
) -> CLIPImageProcessor:
    """The image processor that preprocesses as the release does (its ``preprocess_cfg``).

    Absent keys take the release's values (ImageNet, bilinear, squash). ``resize_mode`` overrides
    the file: ``squash`` resizes to a square, ``shortest`` resizes the shorter side and centre-crops,
    as the authors' caption demo does.
    """
    pre = layout.release_preprocess(preprocess_cfg)
    processor = make_image_processor(config)
    interpolation = pre["interpolation"]
    if interpolation not in _RESAMPLE:
        raise ValueError(f"preprocess_cfg interpolation {interpolation!r} is not supported; use one of {sorted(_RESAMPLE)}.")
    processor.resample = _RESAMPLE[interpolation]
    mode = resize_mode or pre["resize_mode"]
    if mode == "shortest":
        processor.size = {"shortest_edge": config.image_size}
        processor.do_center_crop = True
    elif mode != "squash":
        raise ValueError(f"resize_mode {mode!r} is not supported; use one of {', '.join(RESIZE_MODES)}.")
    return processor


def _weights_file(folder: Path) -> Path:
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{str(folder)!r} has {OPEN_CLIP_CONFIG} but no encoder weights; expected one of "
                            f"{', '.join(OPEN_CLIP_WEIGHTS)} (download the whole release folder).")


def _check_release_folder(src: str | Path, folder: Path) -> None:
    """One line naming the missing file when a release folder is incomplete."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(src)!r} is not a folder; pass a release folder or hf-hub:org/name.")
    present = {p.name for p in folder.iterdir()}
    if OPEN_CLIP_CONFIG not in present:
        found = sorted(present & {*OPEN_CLIP_WEIGHTS, DECODER_CONFIG, DECODER_WEIGHTS})
        raise FileNotFoundError(
            f"{str(src)!r} has no {OPEN_CLIP_CONFIG}"
            + (f" (it has {', '.join(found)}); the release folder is incomplete: download it whole." if found else
               f"; it is not an OpenVision release folder (expected {OPEN_CLIP_CONFIG} + {' or '.join(OPEN_CLIP_WEIGHTS)}).")
        )
    _weights_file(folder)
    decoder_files = [name for name in (DECODER_WEIGHTS, DECODER_CONFIG) if name in present]
    if len(decoder_files) == 1:
        other = DECODER_CONFIG if decoder_files[0] == DECODER_WEIGHTS else DECODER_WEIGHTS
        raise FileNotFoundError(f"{str(folder)!r} has {decoder_files[0]} but no {other}; the caption decoder needs both "
                                "(download the whole release folder).")


def _empty_model(cls: type, config: Any) -> Any:
    """Our model with no memory allocated and no init, ready for ``load_state_dict(assign=True)``:
    initialising a 300M-parameter encoder only to overwrite it costs seconds and twice the memory."""
    with torch.device("meta"):
        return cls(config)


def convert_release(src: str | Path, dst: str | Path, resize_mode: str | None = None) -> ConversionReport:
    """Convert an official release folder (or ``hf-hub:org/name`` in the local cache) into our format.

    An OpenVision 2 release (encoder + caption decoder) becomes an ``Ov2ForCaptioning`` (its
    ``vision_model`` is the encoder alone, and ``load_vision_model`` / LLaVA take the folder); an
    encoder-only or OpenVision 1 release becomes an ``Ov2VisionModel``. The image processor and,
    with a decoder, the caption tokenizer are saved beside, so ``AutoModel.from_pretrained(dst)``
    and ``ov2 caption`` work. The release's own config files are kept in ``dst/release/`` and the
    tensors our model does not store (``proj``, the position table) in ``open_clip_extra.safetensors``,
    so ``export_release`` writes the release back exactly.
    """
    folder = resolve_model_path(src)
    _check_release_folder(src, folder)
    cfg = _read_json(folder / OPEN_CLIP_CONFIG)
    model_cfg = cfg.get("model_cfg", cfg)
    preprocess_cfg = cfg.get("preprocess_cfg")
    vision_config = layout.vision_config_from_open_clip(model_cfg, preprocess_cfg)
    processor = release_image_processor(vision_config, preprocess_cfg, resize_mode)
    state, ignored = layout.split_open_clip_state(load_state_dict_file(_weights_file(folder)))
    vision_state, extras = layout.vision_from_open_clip(state, vision_config)
    has_decoder = (folder / DECODER_WEIGHTS).is_file()
    dst = Path(dst)
    report = ConversionReport(str(src), str(dst), "captioner" if has_decoder else "vision encoder")
    report.converted = len(vision_state)
    report.not_converted = ignored
    if ignored:
        report.notes.append(f"{len(ignored)} non-vision tensors (text tower of a CLIP-style release) are not converted")
    report.notes.append(_preprocessing_note(vision_config, preprocess_cfg, processor, model_cfg))
    if has_decoder:
        model, unknown = _captioner_from_release(folder, vision_config, vision_state)
        report.converted += len(model.decoder.state_dict())
        dec = model.config.decoder_config
        report.notes.append(
            f"caption decoder: width {dec.hidden_size}, {dec.num_hidden_layers} layers, {dec.num_attention_heads} heads, "
            f"MLP {dec.intermediate_size}, {dec.vocab_size} vocabulary rows"
            + (f"; generation limited to the tokenizer's {dec.tokenizer_vocab_size} ids" if dec.tokenizer_vocab_size else "")
        )
        if unknown:
            report.notes.append(f"{DECODER_CONFIG}: unknown field(s) {', '.join(unknown)} ignored")
    else:
        model = _empty_model(Ov2VisionModel, vision_config)
        model.load_state_dict(vision_state, strict=True, assign=True)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    if has_decoder:
        from ..tokenization import build_caption_tokenizer

        build_caption_tokenizer().save_pretrained(dst)
    (dst / RELEASE_FILES).mkdir(exist_ok=True)
    for name in (OPEN_CLIP_CONFIG, DECODER_CONFIG):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dst / RELEASE_FILES / name)
    if extras:
        save_file({k: v.contiguous() for k, v in extras.items()}, dst / EXTRA_WEIGHTS)
        report.kept_aside = sorted(extras)
    report.save(dst)
    return report


def _preprocessing_note(config: Ov2VisionConfig, preprocess_cfg: dict | None, processor: CLIPImageProcessor, model_cfg: dict) -> str:
    pre = layout.release_preprocess(preprocess_cfg)
    mode = "shortest side + centre crop" if processor.do_center_crop else "squash"
    grid = config.num_patches_per_side
    eps = (model_cfg.get("vision_cfg", {}).get("norm_kwargs") or {}).get("eps")
    return (
        f"hidden_act={config.hidden_act}, layer_norm_eps={config.layer_norm_eps}"
        + (f" (the file says {eps}; the release's code runs {config.layer_norm_eps})" if eps is not None and float(eps) != config.layer_norm_eps else "")
        + f"; {config.image_size} px, patch {config.patch_size}: {grid}x{grid} = {grid * grid} tokens; preprocessing: {mode}, "
        + f"{pre['interpolation']}, mean {config.image_mean}, std {config.image_std}"
        + ("" if preprocess_cfg else " (no preprocess_cfg in the release: its defaults, ImageNet + bilinear + squash)")
    )


def _captioner_from_release(
    folder: Path, vision_config: Ov2VisionConfig, vision_state: dict[str, torch.Tensor]
) -> tuple[Ov2ForCaptioning, list[str]]:
    from ..tokenization import build_caption_tokenizer

    decoder_config, unknown = layout.decoder_config_from_release(
        _read_json(folder / DECODER_CONFIG), vision_config.hidden_size, len(build_caption_tokenizer()), DECODER_CONFIG
    )
    decoder_state = layout.decoder_from_release(load_state_dict_file(folder / DECODER_WEIGHTS), decoder_config, vision_config.hidden_size)
    config = Ov2Config(vision_config=vision_config, decoder_config=decoder_config)
    model = _empty_model(Ov2ForCaptioning, config)
    state = {f"vision_model.{k}": v for k, v in vision_state.items()}
    state.update({f"decoder.{k}": v for k, v in decoder_state.items()})
    model.load_state_dict(state, strict=True, assign=True)
    return model, unknown


def _kept_release_file(folder: Path, name: str, regenerated: dict[str, Any], same: Any) -> bytes:
    """The release's own config file when it still describes the model (``same(original)``), else ours."""
    kept = folder / RELEASE_FILES / name
    if kept.is_file():
        original = json.loads(kept.read_text())
        if same(original):
            return kept.read_bytes()
    return (json.dumps(regenerated, indent=2) + "\n").encode()


def export_release(src: str | Path, dst: str | Path, use_safetensors: bool = False) -> ConversionReport:
    """Write one of our checkpoints (encoder or captioner) in the release's layout.

    The encoder goes to ``open_clip_pytorch_model.bin`` (the release's file name) or, with
    ``use_safetensors``, ``open_clip_model.safetensors``; a captioner's decoder to
    ``caption_decoder.safetensors`` + ``text_decoder_config.json``. A converted release is written
    back as it was: the same tensors (``proj`` and the stored position table included) and its own
    config files, so a round trip is bit-identical.
    """
    folder = resolve_model_path(src)
    model_type = checkpoint_model_type(folder)
    captioner = Ov2ForCaptioning.from_pretrained(folder) if model_type == Ov2Config.model_type else None
    vision = captioner.vision_model if captioner is not None else load_vision_model(folder)
    extras = load_state_dict_file(folder / EXTRA_WEIGHTS) if (folder / EXTRA_WEIGHTS).is_file() else {}
    config = vision.config
    state = layout.vision_to_open_clip(vision.state_dict(), config, extras)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    release_cfg = layout.open_clip_config_from_vision(config, embed_dim=state["proj"].shape[1])

    def same_encoder(original: dict) -> bool:
        parsed = layout.vision_config_from_open_clip(original.get("model_cfg", original), original.get("preprocess_cfg"))
        return all(getattr(parsed, k) == getattr(config, k) for k in _VISION_FIELDS)

    (dst / OPEN_CLIP_CONFIG).write_bytes(_kept_release_file(folder, OPEN_CLIP_CONFIG, release_cfg, same_encoder))
    if use_safetensors:
        save_file({k: v.contiguous() for k, v in state.items()}, dst / OPEN_CLIP_WEIGHTS[0])
    else:
        torch.save(state, dst / OPEN_CLIP_WEIGHTS[1])
    report = ConversionReport(str(src), str(dst), "export to the release layout", converted=len(state))
    if "proj" not in extras:
        report.notes.append("the encoder had no 'proj'; the identity was written so open_clip's pooled output is unchanged")
    if captioner is not None:
        dec_cfg = captioner.config.decoder_config
        save_file(layout.decoder_to_release(captioner.decoder.state_dict(), dec_cfg), dst / DECODER_WEIGHTS)
        regenerated = layout.release_decoder_config(dec_cfg, config.hidden_size)

        def same_decoder(original: dict) -> bool:
            defaults = {**layout.DECODER_CONFIG_OPTIONAL, **original}
            return all(defaults.get(k) == v for k, v in regenerated.items())

        (dst / DECODER_CONFIG).write_bytes(_kept_release_file(folder, DECODER_CONFIG, regenerated, same_decoder))
        report.converted += len(captioner.decoder.state_dict())
    return report
