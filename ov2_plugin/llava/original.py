"""OpenVision 2 inside the original LLaVA code (``llava-torch``, the haotian-liu repository).

``install()`` makes LLaVA's own builders produce :class:`Ov2VisionTower` for
``--vision_tower ov2:<folder>`` and leaves every other name (CLIP, paths) to LLaVA. It also
applies two small compatibility shims for transformers 5, each explained where it is defined.
Nothing here is imported by ``import ov2_plugin``: llava is an optional dependency.
"""

from __future__ import annotations

import functools
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from ..configuration import Ov2Config, Ov2VisionConfig
from ..image_processing import saved_image_processor
from ..loading import checkpoint_model_type, load_vision_model

PREFIX = "ov2:"


def _tower_name(cfg) -> str | None:
    return getattr(cfg, "mm_vision_tower", getattr(cfg, "vision_tower", None))


def read_vision_config(path: str | Path) -> Ov2VisionConfig:
    """The encoder config of a vision-only or captioner folder, without loading weights."""
    model_type = checkpoint_model_type(path)
    if model_type == Ov2Config.model_type:
        return Ov2Config.from_pretrained(path).vision_config
    if model_type == Ov2VisionConfig.model_type:
        return Ov2VisionConfig.from_pretrained(path)
    raise ValueError(
        f"{str(path)!r} holds a {model_type!r} checkpoint, not OpenVision 2; pass the folder of 'ov2 pretrain'."
    )


class Ov2VisionTower(nn.Module):
    """LLaVA's ``CLIPVisionTower`` contract with an OpenVision 2 encoder inside.

    The encoder lives under the attribute ``vision_tower`` because LLaVA's LoRA target search
    and its checkpoint key names (``model.vision_tower.vision_tower.*``) rely on it.
    """

    def __init__(self, vision_tower: str, args, delay_load: bool = False) -> None:
        super().__init__()
        if not vision_tower.startswith(PREFIX):
            raise ValueError(f"Ov2VisionTower takes names like 'ov2:<folder>', got {vision_tower!r}.")
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.path = Path(vision_tower[len(PREFIX) :]).expanduser()
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(
                f"mm_vision_select_feature {self.select_feature!r} is not supported; use 'patch' or 'cls_patch'."
            )
        if not delay_load or getattr(args, "unfreeze_mm_vision_tower", False):
            self.load_model()
        else:
            self.cfg_only = read_vision_config(self.path)

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            return
        self.vision_tower = load_vision_model(self.path)
        self.image_processor = saved_image_processor(self.path, self.vision_tower.config)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, outputs) -> torch.Tensor:
        features = outputs.hidden_states[self.select_layer]  # [B, 1+N, D]
        return features[:, 1:] if self.select_feature == "patch" else features

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        # the selected layer only (CLIPVisionTower asks for all of them and keeps one)
        pixels = images.to(device=self.device, dtype=self.dtype)
        out = self.vision_tower(pixels, output_hidden_states=self.select_layer)
        return self.feature_select(out).to(images.dtype)

    def forward(self, images):
        # CLIPVisionTower runs under @torch.no_grad(); we only do so while the encoder is frozen,
        # so that an unfrozen tower (its own learning rate) is actually trained.
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            if isinstance(images, list):
                return [self._encode(img.unsqueeze(0)) for img in images]
            return self._encode(images)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> Ov2VisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2


def _route(original):
    """Wrap LLaVA's ``build_vision_tower``: ``ov2:`` names come to us, all others go to LLaVA."""

    @functools.wraps(original)
    def build_vision_tower(vision_tower_cfg, **kwargs):
        name = _tower_name(vision_tower_cfg)
        if isinstance(name, str) and name.startswith(PREFIX):
            return Ov2VisionTower(name, args=vision_tower_cfg, **kwargs)
        return original(vision_tower_cfg, **kwargs)

    build_vision_tower.ov2_original = original
    return build_vision_tower


def _accept_generation_kwargs(cls) -> None:
    """transformers 5's ``generate`` hands the KV cache to ``forward`` as ``cache=`` (4.38-4.57:
    ``cache_position``), which LLaVA's ``forward`` does not declare. Wrap it to take ``**kwargs``,
    use the cache for the multimodal merge and pass it, with the other extras, to Llama's forward
    under the name this transformers version uses, so generation gives the greedy tokens."""
    if getattr(cls.forward, "ov2_shim", False):
        return
    llava_forward = cls.forward
    base_forward = cls.__mro__[1].forward  # LlamaForCausalLM.forward
    cache_name = "cache" if "cache" in inspect.signature(base_forward).parameters else "past_key_values"

    @functools.wraps(llava_forward)
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        images=None,
        image_sizes=None,
        return_dict=None,
        **kwargs,
    ):
        cache = kwargs.pop("cache", None) if past_key_values is None else past_key_values
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, cache, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, cache, labels, images, image_sizes
                )
            )
        if output_attentions is not None:
            kwargs["output_attentions"] = output_attentions
        if output_hidden_states is not None:
            kwargs["output_hidden_states"] = output_hidden_states
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
        return base_forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **{cache_name: cache},
            **kwargs,
        )

    forward.ov2_shim = True
    cls.forward = forward


def _trainer_shim() -> None:
    """``llava.train.llava_trainer`` imports ``ALL_LAYERNORM_LAYERS`` from ``transformers.trainer``,
    which transformers 5 no longer exports; put back the value it had (``[nn.LayerNorm]``)."""
    import transformers.trainer

    if not hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS"):
        transformers.trainer.ALL_LAYERNORM_LAYERS = [nn.LayerNorm]


def install() -> None:
    """Route ``ov2:<folder>`` towers in LLaVA's builders to us; idempotent."""
    try:
        # Explicit submodule imports: llava/model/__init__.py hides import errors.
        import llava.model.language_model.llava_llama as llava_llama
        import llava.model.llava_arch as llava_arch
        import llava.model.multimodal_encoder.builder as tower_builder
    except ImportError as err:
        raise ModuleNotFoundError(
            f"The original LLaVA code is not importable ({err}); install it with "
            "'pip install --no-deps llava-torch==1.2.2.post1' (never with its dependencies)."
        ) from err
    _trainer_shim()
    if not hasattr(tower_builder.build_vision_tower, "ov2_original"):
        routed = _route(tower_builder.build_vision_tower)
        tower_builder.build_vision_tower = routed
        llava_arch.build_vision_tower = routed  # llava_arch imported the function by name
    _accept_generation_kwargs(llava_llama.LlavaLlamaForCausalLM)


def _llava_trainer_shim() -> None:
    """Three signature changes of transformers 5's Trainer that ``LLaVATrainer`` predates:
    ``tokenizer=`` is now ``processing_class=``; ``_get_train_sampler`` receives the dataset;
    ``_save_checkpoint`` lost its ``metrics`` argument. Adapt each call, change no behaviour."""
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import Trainer

    if getattr(LLaVATrainer.__init__, "ov2_shim", False):
        return
    init, sampler, save_checkpoint = (
        LLaVATrainer.__init__,
        LLaVATrainer._get_train_sampler,
        LLaVATrainer._save_checkpoint,
    )

    def _get_train_sampler(self, train_dataset=None):
        if self.args.group_by_modality_length:
            return sampler(self)
        return Trainer._get_train_sampler(self, train_dataset)

    def _save_checkpoint(self, model, trial, metrics=None):
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            return save_checkpoint(self, model, trial)
        return Trainer._save_checkpoint(self, model, trial)

    LLaVATrainer._get_train_sampler = _get_train_sampler
    LLaVATrainer._save_checkpoint = _save_checkpoint

    @functools.wraps(init)
    def __init__(self, *args, tokenizer=None, **kwargs):
        if tokenizer is not None:
            kwargs.setdefault("processing_class", tokenizer)
        init(self, *args, **kwargs)

    __init__.ov2_shim = True
    LLaVATrainer.__init__ = __init__


def train_main(argv: list[str] | None = None) -> None:
    """LLaVA's own ``llava.train.train.train()`` with the hook installed: every LLaVA flag works,
    and ``--vision_tower ov2:<folder>`` selects OpenVision 2."""
    install()
    _llava_trainer_shim()
    from llava.train import train as llava_train

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if "--deepspeed" in sys.argv:
        from ..deepspeed_helpers import start_deepspeed

        start_deepspeed()  # LLaVA loads its model under ZeRO-3 too
    llava_train.train(attn_implementation="sdpa")


if __name__ == "__main__":
    train_main()
