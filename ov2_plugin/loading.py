"""Loading checkpoints and images at the boundary where user input enters, with errors that
say what is wrong and how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .configuration import Ov2Config, Ov2VisionConfig
from .modeling_captioner import Ov2ForCaptioning
from .modeling_vision import Ov2VisionModel

HUB_PREFIX = "hf-hub:"


def resolve_model_path(name: str | Path) -> Path:
    """A local folder for ``name``. ``hf-hub:org/name`` is looked up in the Hugging Face cache only
    (``HF_HUB_CACHE``, or ``HF_HOME/hub``: what ``hf download org/name`` fills), through
    huggingface_hub's own offline lookup; nothing is downloaded."""
    text = str(name)
    if not text.startswith(HUB_PREFIX):
        return Path(name)
    repo_id = text.removeprefix(HUB_PREFIX).strip("/")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError:
        raise ValueError(f"{text!r} is not a valid hf-hub name; write hf-hub:ORG/NAME, e.g. "
                         "hf-hub:UCSC-VLAA/openvision2-vit-large-patch14-224-vision-only.") from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{text} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and nothing is downloaded here: run "
            f"'hf download {repo_id}' on a machine with network (with the same HF_HOME or HF_HUB_CACHE), or copy its "
            "cache folder here; a local folder with the release files works too."
        ) from None


def checkpoint_model_type(path: str | Path) -> str:
    """The ``model_type`` in ``path/config.json``; a clear error when the folder is not a checkpoint."""
    path = resolve_model_path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Model folder {str(path)!r} does not exist; pass the output_dir of 'ov2 pretrain' or 'ov2 convert'.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no config.json; it is not a Hugging Face checkpoint. "
            "Official OpenVision releases must be converted first: ov2 convert SRC DST."
        )
    try:
        return json.loads(config_file.read_text()).get("model_type", "")
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the checkpoint is damaged.") from err


def load_captioner(path: str | Path, **kwargs) -> Ov2ForCaptioning:
    path = resolve_model_path(path)
    model_type = checkpoint_model_type(path)
    if model_type != Ov2Config.model_type:
        raise ValueError(
            f"{str(path)!r} holds a {model_type!r} checkpoint, not an OpenVision 2 captioner "
            f"({Ov2Config.model_type!r}); captions need the folder written by 'ov2 pretrain'."
        )
    return Ov2ForCaptioning.from_pretrained(path, **kwargs)


def load_vision_model(path: str | Path, **kwargs) -> Ov2VisionModel:
    """The encoder from a vision-only folder or from a whole captioner folder."""
    path = resolve_model_path(path)
    model_type = checkpoint_model_type(path)
    if model_type == Ov2VisionConfig.model_type:
        return Ov2VisionModel.from_pretrained(path, **kwargs)
    if model_type == Ov2Config.model_type:
        return Ov2ForCaptioning.from_pretrained(path, **kwargs).vision_model
    raise ValueError(
        f"{str(path)!r} holds a {model_type!r} checkpoint, not an OpenVision 2 encoder "
        f"({Ov2VisionConfig.model_type!r} or {Ov2Config.model_type!r}); "
        "convert other weights with 'ov2 convert'."
    )


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path`` as upright 8-bit RGB (``image_decoding.decode_image``), or a one-line error."""
    from .image_decoding import ImageDecodeError, decode_image

    try:
        return decode_image(Path(path))
    except ImageDecodeError as err:
        raise ValueError(f"Image {str(path)!r} cannot be read ({err}); it is corrupt or not an image.") from err
