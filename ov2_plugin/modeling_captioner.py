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
from transformers.utils import ModelOutput

from .configuration import Ov2Config
from .modeling_vision import Ov2Block, Ov2PreTrainedModel, Ov2VisionModel


@dataclass
class Ov2CaptioningOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None


def drop_visual_tokens(tokens: torch.Tensor, keep_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep ``int(N * keep_ratio)`` tokens of each sample, a fresh random subset per sample."""
    b, n, d = tokens.shape
    keep = int(n * keep_ratio)
    noise = torch.rand(b, n, device=tokens.device, generator=generator)
    index = noise.argsort(dim=1)[:, :keep]  # [B, K]
    return tokens.gather(1, index[..., None].expand(-1, -1, d))


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` without ever holding the [M, V] logits.

    Why our own: with a 30k vocabulary the head and its loss are a large share of a caption
    step; the plain path keeps a full fp32 logits tensor (and its gradient) alive. Since the
    loss is a scalar, its gradients can be computed chunk by chunk during the forward pass
    (softmax minus one-hot, times the head), so backward only rescales them; the matmul
    count stays the same (forward, grad of hidden, grad of weight) and peak memory is one
    chunk of logits.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
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
            grad = grad.div_(max(rows, 1)).to(h.dtype)  # d(mean loss)/d(logits)
            grad_hidden[start:start + chunk_rows] = grad @ weight
            grad_weight += (grad.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / max(rows, 1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_out.to(grad_hidden.dtype), (grad_weight * grad_out).to(ctx.weight_dtype), None, None


def chunked_head_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 1024
) -> torch.Tensor:
    """Next-token cross-entropy of the head on ``hidden`` [B, T, E], no logits on ignored positions.

    ``labels`` [B, T] are unshifted ids with -100 to ignore, as for ``Ov2ForCaptioning``. Under
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
    if device == "meta":  # autocast knows no meta device; the count is the same in any dtype
        return _ChunkedHeadCrossEntropy.apply(hidden, weight, targets, chunk_rows)
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False):
        return _ChunkedHeadCrossEntropy.apply(hidden.to(dtype), weight.to(dtype), targets, chunk_rows)


def prefix_lm_mask(num_image: int, num_text: int, device: torch.device) -> torch.Tensor:
    """Boolean [K+T, K+T] mask, True = may attend: all see the image, text is causal, image never sees text."""
    total = num_image + num_text
    mask = torch.ones(total, total, dtype=torch.bool, device=device).tril()
    mask[:, :num_image] = True
    return mask


class Ov2CaptionDecoder(nn.Module):
    def __init__(self, config: Ov2Config) -> None:
        super().__init__()
        dec = config.decoder_config
        self.image_projection = nn.Linear(config.vision_config.hidden_size, dec.hidden_size, bias=False)
        self.embed_tokens = nn.Embedding(dec.vocab_size, dec.hidden_size)
        self.layers = nn.ModuleList([Ov2Block(dec) for _ in range(dec.num_hidden_layers)])
        self.norm = nn.LayerNorm(dec.hidden_size, eps=dec.layer_norm_eps)
        self.lm_head = nn.Linear(dec.hidden_size, dec.vocab_size, bias=False)

    def hidden(self, image_tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Normed decoder states at the text positions [B, T, E]."""
        img = self.image_projection(image_tokens)  # [B, K, E]
        txt = self.embed_tokens(input_ids)  # [B, T, E]
        x = torch.cat([img, txt.to(img.dtype)], dim=1)
        mask = prefix_lm_mask(img.shape[1], txt.shape[1], x.device)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x[:, img.shape[1]:])

    def forward(self, image_tokens: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden(image_tokens, input_ids))

    def loss(self, image_tokens: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over positions whose label is not -100, without full logits."""
        return chunked_head_cross_entropy(self.hidden(image_tokens, input_ids), self.lm_head.weight, labels)


class Ov2ForCaptioning(Ov2PreTrainedModel):
    """Image -> caption pretraining model; its ``vision_model`` is the encoder users keep."""

    config_class = Ov2Config
    base_model_prefix = "ov2"
    _no_split_modules = ["Ov2Block"]
    # The loss is a mean over this batch's tokens; without this flag the Trainer would pass
    # ``num_items_in_batch`` (which we ignore) and multiply the loss by the world size under DDP.
    accepts_loss_kwargs = False
    # Training with labels uses the chunked head + loss (no [B, T, V] logits); set False for
    # the plain lm_head + F.cross_entropy path (same loss and gradients, more memory and time).
    fused_head_loss: bool = True

    def __init__(self, config: Ov2Config) -> None:
        super().__init__(config)
        self.vision_model = Ov2VisionModel(config.vision_config)
        self.decoder = Ov2CaptionDecoder(config)
        self.post_init()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch tokens for the decoder [B, K, D]: before the final norm, CLS excluded, dropped in training."""
        tokens = self.vision_model(pixel_values).last_hidden_state[:, 1:]
        if self.training and self.config.keep_ratio < 1.0:
            tokens = drop_visual_tokens(tokens, self.config.keep_ratio)
        return tokens

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool | None = None,
        **kwargs,
    ) -> Ov2CaptioningOutput:
        """Logits for every text position; with ``labels`` also the loss.

        ``labels`` are the input ids with -100 on positions to ignore; the shift happens here,
        as in Hugging Face causal LMs. Positions where ``attention_mask`` is 0 are ignored too.
        In training mode with ``labels`` the loss comes from the chunked head (``fused_head_loss``)
        and ``logits`` is None unless ``return_logits=True``; in eval mode logits are always returned.
        """
        image_tokens = self.encode_image(pixel_values)
        if return_logits is None:
            return_logits = labels is None or not self.training or not self.fused_head_loss
        if labels is not None and attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)
        if labels is not None and self.fused_head_loss and not return_logits:
            loss = self.decoder.loss(image_tokens, input_ids, labels)
            return Ov2CaptioningOutput(loss=loss, logits=None, image_tokens=image_tokens)
        logits = self.decoder(image_tokens, input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return Ov2CaptioningOutput(loss=loss, logits=logits, image_tokens=image_tokens)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Caption ids [B, <= max_new_tokens] (no BOS), padded after EOS with the pad id.

        The decoder is re-run on the whole prefix at each step instead of keeping a KV cache:
        captions are at most 128 tokens and the image is encoded once, so this keeps the model
        code simple at a small cost.
        """
        was_training = self.training
        self.eval()
        image_tokens = self.encode_image(pixel_values)
        if num_beams > 1:
            out = self._beam_search(image_tokens, max_new_tokens, num_beams, length_penalty)
        else:
            out = self._greedy(image_tokens, max_new_tokens)
        self.train(was_training)
        return out

    def _greedy(self, image_tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        dec = self.config.decoder_config
        b = image_tokens.shape[0]
        ids = torch.full((b, 1), dec.bos_token_id, dtype=torch.long, device=image_tokens.device)
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            nxt = self.decoder(image_tokens, ids)[:, -1].argmax(-1)
            nxt = nxt.masked_fill(done, dec.pad_token_id)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == dec.eos_token_id
            if done.all():
                break
        return ids[:, 1:]

    def _beam_search(self, image_tokens: torch.Tensor, max_new_tokens: int, beams: int, length_penalty: float) -> torch.Tensor:
        """Plain beam search; a beam that emits EOS is finished and scored by log-prob / length**penalty."""
        dec = self.config.decoder_config
        b, k, d = image_tokens.shape
        device = image_tokens.device
        img = image_tokens.repeat_interleave(beams, dim=0)  # [B*beams, K, D]
        ids = torch.full((b * beams, 1), dec.bos_token_id, dtype=torch.long, device=device)
        scores = torch.full((b, beams), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
        for _ in range(max_new_tokens):
            logp = self.decoder(img, ids)[:, -1].float().log_softmax(-1)  # [B*beams, V]
            vocab = logp.shape[-1]
            cand = (scores.view(-1, 1) + logp).view(b, beams * vocab)
            top, flat = cand.topk(2 * beams, dim=1)  # room for beams that end here
            new_ids, new_scores = [], torch.full((b, beams), float("-inf"), device=device)
            for i in range(b):
                kept = 0
                for score, idx in zip(top[i].tolist(), flat[i].tolist()):
                    beam, tok = divmod(idx, vocab)
                    seq = ids[i * beams + beam]
                    if tok == dec.eos_token_id:
                        hyp = seq[1:].tolist() + [tok]
                        finished[i].append((score / len(hyp) ** length_penalty, hyp))
                        continue
                    if kept < beams:
                        new_ids.append(torch.cat([seq, seq.new_tensor([tok])]))
                        new_scores[i, kept] = score
                        kept += 1
                while kept < beams:  # pad with dead beams
                    new_ids.append(torch.cat([ids[i * beams], ids.new_tensor([dec.pad_token_id])]))
                    kept += 1
            ids, scores = torch.stack(new_ids), new_scores
            if all(len(f) >= beams for f in finished):  # early stopping, as HF's early_stopping=True
                break
        out = []
        for i in range(b):
            if not finished[i]:  # nothing ended: take the best open beam
                best = scores[i].argmax().item()
                finished[i].append((0.0, ids[i * beams + best, 1:].tolist()))
            out.append(max(finished[i], key=lambda h: h[0])[1])
        width = max(len(o) for o in out)
        return torch.tensor([o + [dec.pad_token_id] * (width - len(o)) for o in out], dtype=torch.long, device=device)
