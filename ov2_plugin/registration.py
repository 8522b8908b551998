"""Registration with transformers' Auto classes, run on ``import ov2_plugin``.

With it, ``AutoModel.from_config``, ``from_pretrained`` and ``LlavaConfig(vision_config=...)``
resolve our model types without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel

from .configuration import Ov2Config, Ov2DecoderConfig, Ov2VisionConfig
from .modeling_captioner import Ov2ForCaptioning
from .modeling_vision import Ov2VisionModel


def register() -> None:
    for config_cls in (Ov2VisionConfig, Ov2DecoderConfig, Ov2Config):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModel.register(Ov2VisionConfig, Ov2VisionModel, exist_ok=True)
    AutoModel.register(Ov2Config, Ov2ForCaptioning, exist_ok=True)
