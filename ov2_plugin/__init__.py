"""OpenVision 2 for the PyTorch multimodal stack: pretrain, swap into LLaVA, evaluate."""

from .configuration import Ov2Config, Ov2DecoderConfig, Ov2VisionConfig
from .image_processing import make_image_processor
from .modeling_captioner import Ov2CaptioningOutput, Ov2ForCaptioning
from .modeling_vision import Ov2VisionModel
from .registration import register
from .tokenization import build_caption_tokenizer

register()

__version__ = "0.1.0"
__all__ = [
    "Ov2Config",
    "Ov2DecoderConfig",
    "Ov2VisionConfig",
    "Ov2VisionModel",
    "Ov2ForCaptioning",
    "Ov2CaptioningOutput",
    "build_caption_tokenizer",
    "make_image_processor",
]
