"""CoCa as open_clip builds and trains it, on our data and ViT shape, exportable as our encoder.

``CocaModel`` wraps open_clip's own ``CoCa`` (built from a config dict, ``pretrained=None``: no
weights are read) and its own ``CoCaLoss`` (contrastive weight 1, caption weight 2, open_clip's
training defaults), so it runs in the same Trainer, on the same ``CaptionCollator`` batches
(BERT ids, pad 0, which CoCa's pad handling and caption loss take as they are).

The vision tower is open_clip's ``VisionTransformer`` in the layout our converter reads
(``ov2_plugin/convert/open_clip_layout.py``): no pre-LN, average pool, final LN after the pool,
no attentional pooler, patch conv without bias, GELU, our LayerNorm eps, and as position table
OpenVision's fixed 2-D sin-cos table (open_clip's own ``sin_cos_2d`` option is MAE's table, which
differs; we write ours into its learnable slot and freeze it). So ``encoder`` is exact: an
``Ov2VisionModel`` with the same weights, equal outputs to open_clip's tower up to float rounding.

What this costs in fidelity to open_clip's CoCa configs: those use an attentional pooler, whose
output LN is then the tower's final LN (an export would not be exact). Without the pooler CoCa's
decoder cross-attends to the patch tokens directly, and its text tower feeds the decoder, so open_clip
needs the text and multimodal widths equal to the ViT width: they take the ViT's width and the
caption decoder's depth (each) and heads.
"""

from __future__ import annotations

import torch
from open_clip.loss import CoCaLoss
from torch import nn
from torch.nn import functional as F

from ..convert.open_clip_layout import release_position_table, vision_from_open_clip
from ..modeling_vision import Ov2PreTrainedModel, Ov2VisionModel
from .configuration import Ov2ObjectiveConfig
from .contrastive import ObjectiveOutput
from .losses import StepFeatures, gradient_share, rank_and_world_size, scored_features, share_of_step

CAPTION_LOSS_WEIGHT, CLIP_LOSS_WEIGHT = 2.0, 1.0  # open_clip_train's --coca-*-loss-weight defaults


def open_clip_coca_config(config: Ov2ObjectiveConfig) -> dict:
    """The ``CoCa(**cfg)`` arguments for our ViT config and caption-decoder sizes."""
    v, d = config.vision_config, config.decoder_config
    width = v.hidden_size
    heads = d.num_attention_heads if width % d.num_attention_heads == 0 else v.num_attention_heads
    text = dict(context_length=config.text_length, vocab_size=d.vocab_size, width=width, heads=heads,
                layers=d.num_hidden_layers, mlp_ratio=d.intermediate_size / d.hidden_size, embed_cls=True,
                pad_id=d.pad_token_id, output_tokens=True, norm_kwargs={"eps": d.layer_norm_eps})
    multimodal = {k: text[k] for k in ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_kwargs")}
    vision = dict(image_size=v.image_size, layers=v.num_hidden_layers, width=width, head_width=width // v.num_attention_heads,
                  mlp_ratio=v.intermediate_size / width, patch_size=v.patch_size, no_ln_pre=True, pool_type="avg",
                  final_ln_after_pool=True, attentional_pool=False, output_tokens=True,
                  norm_kwargs={"eps": v.layer_norm_eps})
    return dict(embed_dim=width, vision_cfg=vision, text_cfg=text, multimodal_cfg=multimodal, pad_id=d.pad_token_id)


class CocaModel(Ov2PreTrainedModel):
    config_class = Ov2ObjectiveConfig
    accepts_loss_kwargs = True  # num_items_in_batch, as Ov2ForCaptioning's
    _no_split_modules = ["ResidualAttentionBlock"]
    supports_gradient_checkpointing = False  # open_clip's own switch: ``self.coca.set_grad_checkpointing()``

    def __init__(self, config: Ov2ObjectiveConfig) -> None:
        super().__init__(config)
        from open_clip.coca_model import CoCa

        if config.vision_config.hidden_act != "gelu":
            raise ValueError(f"CoCa's vision tower uses exact GELU; this config asks for {config.vision_config.hidden_act!r}.")
        self.coca = CoCa(**open_clip_coca_config(config))
        self.loss_type = "ForCausalLM"  # shifted caption labels: the Trainer counts labels[:, 1:]
        position = self.coca.visual.positional_embedding.requires_grad_(False)
        if position.device.type != "meta":  # from_pretrained builds on meta, then loads the stored table
            v = config.vision_config
            with torch.no_grad():
                position.copy_(release_position_table(v.num_patches_per_side, v.hidden_size))
                # open_clip 3.3's CoCa never initialises its text decoder's text_projection (the
                # decoder's init_parameters is not called, and fails if called), so it holds what
                # torch.empty left: NaN under --full_determinism, which fills new memory with NaN.
                # We give it the normal(width^-0.5) that init_parameters intends.
                proj = self.coca.text_decoder.text_projection
                nn.init.normal_(proj, std=proj.shape[0] ** -0.5)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: open_clip's modules initialise themselves in their constructors (its own recipe)."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As ``PreTrainedModel.from_pretrained``, then open_clip's causal masks rebuilt: they are
        non-persistent buffers, so a model built on the meta device and loaded from a file would
        keep uninitialised memory there (text embeddings turned NaN, retrieval fell to chance)."""
        model = super().from_pretrained(*args, **kwargs)
        text, decoder = model.coca.text, model.coca.text_decoder
        text.attn_mask = text.build_causal_mask().to(text.attn_mask.device)
        decoder.attn_mask = decoder.build_attention_mask().to(decoder.attn_mask.device)
        return model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, num_items_in_batch=None, step_features: StepFeatures | None = None,
                **kwargs) -> ObjectiveOutput:
        """open_clip's CoCa forward and CoCaLoss on images [B, 3, H, W] and caption ids [B, T] (pad 0), over the
        global batch as the other objectives (``losses.py``): the contrastive part with every rank's features
        (and every accumulated micro-batch's), the caption part's token sum divided by ``num_items_in_batch``."""
        out = self.coca(pixel_values, input_ids[:, : self.config.text_length])
        image, texts, share = scored_features(step_features, out["image_features"], [out["text_features"]])
        rank, world_size = rank_and_world_size()
        pad = self.config.decoder_config.pad_token_id
        loss_fn = CoCaLoss(caption_loss_weight=CAPTION_LOSS_WEIGHT, clip_loss_weight=CLIP_LOSS_WEIGHT, pad_id=pad,
                           local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
        contrastive, caption = loss_fn(image, texts[0], out["logits"], out["labels"], gradient_share(out["logit_scale"], share))
        contrastive = share_of_step(contrastive, num_items_in_batch, step_features)
        if num_items_in_batch is not None:  # CoCaLoss's caption part is this batch's mean: make it a share of the step's sum
            caption = caption * (out["labels"] != pad).sum() / num_items_in_batch
        return ObjectiveOutput(loss=contrastive + caption, caption_loss=caption, contrastive_loss=contrastive)

    @torch.no_grad()
    def contrastive_features(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                             text_ids=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The normalised image and text features CoCa's forward contrasts, without gradient (``StepFeatures``)."""
        return self.embed_image(pixel_values), [self.embed_text(input_ids)]

    @property
    def encoder(self) -> Ov2VisionModel:
        """open_clip's vision tower as an ``Ov2VisionModel`` (a new module holding copies of the weights)."""
        state = {k: t.detach().clone() for k, t in self.coca.visual.state_dict().items()}
        ours, _extras = vision_from_open_clip(state, self.config.vision_config)  # proj: the contrastive head, not ours
        model = Ov2VisionModel(self.config.vision_config)
        model.load_state_dict(ours, strict=True)
        return model.to(next(self.parameters()).device)

    def embed_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.coca.encode_image(pixel_values, normalize=False).float(), dim=-1)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.coca.encode_text(input_ids[:, : self.config.text_length], normalize=False).float(), dim=-1)
