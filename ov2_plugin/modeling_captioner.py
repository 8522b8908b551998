"""The OpenVision 2 captioner: encoder, visual-token dropping, prefix-LM caption decoder.

Training step (B batch, N patches, K = int(N * keep_ratio), T text tokens, E decoder width):
images -> encoder -> patch tokens before the final norm [B, N, D]
-> keep a random K of them per sample (training only) [B, K, D]
-> linear projection, no bias [B, K, E] -> concatenated before the text embeddings [B, K+T, E]
-> pre-LN blocks with a prefix-LM mask -> final norm -> head on text positions [B, T, V]
-> next-token cross-entropy over non-pad tokens.
Neither stream gets positional embeddings in the decoder: image tokens carry the ViT's, and
causal attention orders the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation.utils import GenerateOutput
from transformers.utils import ModelOutput

from .configuration import Ov2Config
from .modeling_vision import Ov2Block, Ov2PreTrainedModel, Ov2VisionModel


@dataclass
class Ov2CaptioningOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    cache: Cache | None = None


def drop_visual_tokens(tokens: torch.Tensor, keep_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep ``int(N * keep_ratio)`` tokens of each sample, a fresh random subset per sample."""
    b, n, d = tokens.shape
    keep = int(n * keep_ratio)
    # torch.rand's generator overload takes no symbolic sizes: torch.compile with a dynamic batch fails on it
    generated = {"generator": generator} if generator is not None else {}
    noise = torch.rand(b, n, device=tokens.device, **generated)
    index = noise.argsort(dim=1)[:, :keep]  # [B, K]
    return tokens.gather(1, index[..., None].expand(-1, -1, d))


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Cross-entropy of ``hidden @ weight.T`` summed over the M rows and divided by ``divisor``,
    without ever holding the [M, V] logits.

    Why our own: with a 30k vocabulary the head and its loss are a large share of a caption
    step; the plain path keeps a full fp32 logits tensor (and its gradient) alive. Since the
    loss is a scalar, its gradients can be computed chunk by chunk during the forward pass
    (softmax minus one-hot, times the head), so backward only rescales them; the matmul
    count stays the same (forward, grad of hidden, grad of weight) and peak memory is one
    chunk of logits.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
                divisor: torch.Tensor) -> torch.Tensor:
        rows = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk_rows):
            h = hidden[start:start + chunk_rows]  # [c, E]
            tgt = targets[start:start + chunk_rows, None]  # [c, 1]
            logp = (h @ weight.t()).float().log_softmax(-1)  # [c, V]
            total -= logp.gather(1, tgt).sum()
            grad = logp.exp_()  # softmax
            grad.scatter_add_(1, tgt, torch.full_like(tgt, -1, dtype=grad.dtype))
            grad = grad.div_(divisor).to(h.dtype)  # d(loss)/d(logits)
            grad_hidden[start:start + chunk_rows] = grad @ weight
            grad_weight += (grad.t() @ h).float()
            del logp, grad  # else this chunk's [c, V] buffers are still held while the next chunk makes its own
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / divisor

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_out.to(grad_hidden.dtype), (grad_weight * grad_out).to(ctx.weight_dtype), None, None, None


def token_loss_divisor(num_items_in_batch: torch.Tensor | int | None, batch_count: torch.Tensor | int,
                       device: torch.device) -> torch.Tensor:
    """What the summed token loss is divided by: ``num_items_in_batch`` (the predicted tokens of the
    whole optimizer step, all ranks and accumulated micro-batches, as the Trainer counts them) or, without
    it, ``batch_count``, this batch's own count (a plain mean). fp32 scalar on ``device``; at least 1."""
    count = batch_count if num_items_in_batch is None else num_items_in_batch
    return torch.as_tensor(count, dtype=torch.float32, device=device).clamp(min=1)


def chunked_head_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 1024,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of the head on ``hidden`` [B, T, E], no logits on ignored positions.

    ``labels`` [B, T] are unshifted ids with -100 to ignore, as for ``Ov2ForCaptioning``. The summed
    loss is divided by ``num_items_in_batch`` when given, else by this batch's token count. Under
    autocast the matmuls run in the autocast dtype and the softmax in fp32, as the plain
    ``lm_head`` + ``F.cross_entropy`` path does.
    """
    hidden, targets = hidden[:, :-1], labels[:, 1:]
    if hidden.device.type == "meta":  # no values to select on (FLOP counting): keep every position
        hidden, targets = hidden.flatten(0, 1), targets.flatten().clamp(min=0)
    else:
        valid = targets != -100
        hidden, targets = hidden[valid], targets[valid]  # [M, E], [M]
    device = hidden.device.type
    divisor = token_loss_divisor(num_items_in_batch, targets.numel(), targets.device)
    if device == "meta":  # autocast knows no meta device; the count is the same in any dtype
        return _ChunkedHeadCrossEntropy.apply(hidden, weight, targets, chunk_rows, divisor)
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False):
        return _ChunkedHeadCrossEntropy.apply(hidden.to(dtype), weight.to(dtype), targets, chunk_rows, divisor)


def prefix_lm_mask(num_image: int, num_text: int, device: torch.device) -> torch.Tensor:
    """Boolean [K+T, K+T] mask, True = may attend: all see the image, text is causal, image never sees text."""
    total = num_image + num_text
    mask = torch.ones(total, total, dtype=torch.bool, device=device).tril()
    mask[:, :num_image] = True
    return mask


def continuation_mask(num_past: int, num_new: int, device: torch.device) -> torch.Tensor | None:
    """Boolean [T, past+T] mask for T new text tokens after ``num_past`` cached positions: each sees
    every cached position (image and earlier text) and the new ones causally; None for one token."""
    if num_new == 1:
        return None
    return torch.ones(num_new, num_past + num_new, dtype=torch.bool, device=device).tril(diagonal=num_past)


class Ov2CaptionDecoder(nn.Module):
    def __init__(self, config: Ov2Config) -> None:
        super().__init__()
        dec = config.decoder_config
        self.image_projection = nn.Linear(config.vision_config.hidden_size, dec.hidden_size, bias=False)
        self.embed_tokens = nn.Embedding(dec.vocab_size, dec.hidden_size)
        self.layers = nn.ModuleList([Ov2Block(dec) for _ in range(dec.num_hidden_layers)])
        self.norm = nn.LayerNorm(dec.hidden_size, eps=dec.layer_norm_eps)
        self.lm_head = nn.Linear(dec.hidden_size, dec.vocab_size, bias=False)

    def hidden(self, image_tokens: torch.Tensor | None, input_ids: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """Normed decoder states at the text positions [B, T, E].

        With a ``cache`` (generation) the first call runs image tokens + text and caches every
        position; later calls take only the new text ids and ignore ``image_tokens``.
        """
        txt = self.embed_tokens(input_ids)  # [B, T, E]
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            if image_tokens is None:
                raise ValueError("The caption decoder needs image_tokens (or pixel_values) on its first call.")
            img = self.image_projection(image_tokens)  # [B, K, E]
            x = torch.cat([img, txt.to(img.dtype)], dim=1)  # [B, K+T, E]
            num_image = img.shape[1]
            mask = prefix_lm_mask(num_image, txt.shape[1], x.device)
        else:
            x, num_image = txt.to(self.image_projection.weight.dtype), 0
            mask = continuation_mask(past, txt.shape[1], x.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache, i)
        return self.norm(x[:, num_image:])

    def forward(self, image_tokens: torch.Tensor | None, input_ids: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return self.lm_head(self.hidden(image_tokens, input_ids, cache))

    def loss(self, image_tokens: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor, fused: bool = True,
             num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """Next-token loss over positions whose label is not -100: summed, then divided by
        ``num_items_in_batch`` (or this batch's count). ``fused``: the chunked head, without full logits;
        else ``lm_head`` + ``F.cross_entropy`` (same loss and gradients, more memory and time)."""
        if fused:
            return chunked_head_cross_entropy(self.hidden(image_tokens, input_ids), self.lm_head.weight, labels,
                                              num_items_in_batch=num_items_in_batch)
        return shifted_cross_entropy(self(image_tokens, input_ids), labels, num_items_in_batch)


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                          num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """Next-token cross-entropy of ``logits`` [B, T, V] against unshifted ``labels`` [B, T] (-100 ignored):
    summed, then divided by ``num_items_in_batch`` (or the count of predicted tokens)."""
    targets = labels[:, 1:].flatten()
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=-100, reduction="sum")
    return total / token_loss_divisor(num_items_in_batch, (targets != -100).sum(), targets.device)


class Ov2ForCaptioning(Ov2PreTrainedModel, GenerationMixin):
    """Image -> caption pretraining model; its ``vision_model`` is the encoder users keep."""

    config_class = Ov2Config
    base_model_prefix = "ov2"
    main_input_name = "input_ids"  # what GenerationMixin decodes; the image enters as pixel_values
    _no_split_modules = ["Ov2Block"]
    # The Trainer passes ``num_items_in_batch`` (the predicted tokens of the whole optimizer step,
    # all ranks, all accumulated micro-batches); the loss is the summed token loss divided by it, so
    # accumulation and DDP/ZeRO give the update of one big batch (transformers' own causal LMs do the same).
    accepts_loss_kwargs = True
    # Training with labels uses the chunked head + loss (no [B, T, V] logits); set False for
    # the plain lm_head + F.cross_entropy path (same loss and gradients, more memory and time).
    fused_head_loss: bool = True

    def __init__(self, config: Ov2Config) -> None:
        super().__init__(config)
        self.vision_model = Ov2VisionModel(config.vision_config)
        self.decoder = Ov2CaptionDecoder(config)
        self.loss_type = "ForCausalLM"  # labels are shifted here: the Trainer counts items over labels[:, 1:]
        if self.generation_config.max_new_tokens is None:
            self.generation_config.max_new_tokens = 64  # as the authors' caption demo
        self.post_init()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch tokens for the decoder [B, K, D]: before the final norm, CLS excluded, dropped in training."""
        tokens = self.vision_model(pixel_values).last_hidden_state[:, 1:]
        if self.training and self.config.keep_ratio < 1.0:
            tokens = drop_visual_tokens(tokens, self.config.keep_ratio)
        return tokens

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool | None = None,
        image_tokens: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> Ov2CaptioningOutput:
        """Logits for every text position; with ``labels`` also the loss.

        ``labels`` are the input ids with -100 on positions to ignore; the shift happens here,
        as in Hugging Face causal LMs. Positions where ``attention_mask`` is 0 are ignored too. The loss is
        the summed token loss divided by ``num_items_in_batch`` when given, else this batch's mean.
        In training mode with ``labels`` the loss comes from the chunked head (``fused_head_loss``)
        and ``logits`` is None unless ``return_logits=True``; in eval mode logits are always returned.
        ``image_tokens`` (from ``encode_image``) replace ``pixel_values``; with a ``cache`` (as
        ``generate`` passes) only the new ids are run once the image is cached.
        """
        if input_ids is None:
            raise ValueError("Ov2ForCaptioning needs input_ids (the caption, starting with BOS).")
        if image_tokens is None and (cache is None or cache.get_seq_length() == 0):
            if pixel_values is None:
                raise ValueError("Ov2ForCaptioning needs pixel_values (or image_tokens).")
            image_tokens = self.encode_image(pixel_values)
        if cache is not None:  # generation step
            return Ov2CaptioningOutput(logits=self.decoder(image_tokens, input_ids, cache), cache=cache)
        if return_logits is None:
            return_logits = labels is None or not self.training or not self.fused_head_loss
        if labels is not None and attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)
        if labels is not None and self.fused_head_loss and not return_logits:
            loss = self.decoder.loss(image_tokens, input_ids, labels, num_items_in_batch=num_items_in_batch)
            return Ov2CaptioningOutput(loss=loss, logits=None, image_tokens=image_tokens)
        logits = self.decoder(image_tokens, input_ids)
        loss = None if labels is None else shifted_cross_entropy(logits, labels, num_items_in_batch)
        return Ov2CaptioningOutput(loss=loss, logits=logits, image_tokens=image_tokens)

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor | GenerateOutput:
        """Caption ids [B, <= max_new_tokens], BOS removed, padded after EOS with the pad id.

        Transformers' own ``GenerationMixin.generate`` does the decoding, so every standard option
        works (``num_beams``, ``do_sample``, ``temperature``, ``top_p``, ``repetition_penalty``,
        ``no_repeat_ngram_size``, a ``GenerationConfig``); defaults come from the saved
        ``generation_config.json``. The image is encoded once (nothing dropped); the decoder's
        first step runs image tokens + BOS and caches them, later steps feed one token. Ids the
        tokenizer cannot decode (``decoder_config.tokenizer_vocab_size`` and above) are suppressed.
        """
        if image_tokens is None:
            if pixel_values is None:
                raise ValueError("generate() needs pixel_values (or image_tokens from encode_image).")
            was_training = self.training
            self.eval()
            image_tokens = self.encode_image(pixel_values)
            self.train(was_training)
        dec = self.config.decoder_config
        prompt = kwargs.pop("input_ids", None)
        if prompt is None:
            prompt = torch.full((image_tokens.shape[0], 1), dec.bos_token_id, dtype=torch.long, device=image_tokens.device)
        limit = dec.tokenizer_vocab_size
        if limit is not None and limit < dec.vocab_size:
            kwargs["suppress_tokens"] = sorted(set(kwargs.get("suppress_tokens") or ()) | set(range(limit, dec.vocab_size)))
        if kwargs.get("use_cache", True):
            kwargs.setdefault("cache", DynamicCache())
        out = super().generate(input_ids=prompt, image_tokens=image_tokens, **kwargs)
        if isinstance(out, torch.Tensor):
            return out[:, prompt.shape[1]:]
        out.sequences = out.sequences[:, prompt.shape[1]:]
        return out
