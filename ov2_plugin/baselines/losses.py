"""The baselines' contrastive losses over the global batch: open_clip's own ``ClipLoss`` and ``SigLipLoss``.

Shapes: B batch on this rank, P embedding width, W ranks, n accumulated micro-batches per optimizer step.

Every rank contrasts its images and texts with those of all ranks: open_clip gathers the features
with their gradient (``gather_with_grad``), as it trains, and each rank scores its own rows
(``local_loss``), so the mean of the ranks' losses is the loss of the global batch and DDP's
gradient average gives that loss's gradient. Under gradient accumulation the features of the
step's other micro-batches come from a pass without gradient (``StepFeatures``, open_clip's
``--accum-freq``), so each micro-batch scores the whole step's negatives too.

Why the results are rescaled (``share_of_step``): the Trainer passes ``num_items_in_batch`` to
models whose caption loss is a token sum divided by the step's count, multiplies what they
return by W, and adds up the micro-batches. A contrastive loss that every rank and micro-batch
computes over the whole step must then return value / (W n), so the logged loss is the step's,
while its gradient stays that of loss / W, since each micro-batch reaches only its own features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """The process group's rank and size, else (0, 1). Not ``data.sharding.distributed_rank_and_world``, which
    also reads torchrun's environment: a gather needs an initialised group, not only a launcher."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def contrastive_loss(kind: str, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's loss of its normalised ``image`` [B, P] rows against every rank's ``text`` [B, P] (and
    its texts against every image, for ``softmax``); ``logit_scale`` is the log temperature.

    ``softmax``: CLIP's symmetric InfoNCE. ``sigmoid``: SigLIP's pairwise loss, summed over the texts
    and averaged over the images (Zhai et al., 2023). One rank: the plain batch loss.
    """
    rank, world_size = rank_and_world_size()
    if kind == "sigmoid":
        # 'gather': all_gather with gradient, which every backend has (the default neighbour exchange
        # sends point-to-point, which the CPU backend gloo runs only in part); same loss and gradients.
        loss = SigLipLoss(rank=rank, world_size=world_size, dist_impl="gather")
        return loss(image, text, logit_scale.exp(), logit_bias)
    loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    return loss(image, text, logit_scale.exp())


@dataclass
class StepFeatures:
    """The contrastive features of every micro-batch of one optimizer step, computed without gradient.

    ``image[j]`` [B, P] and ``texts[j]`` (one [B, P] per caption) belong to micro-batch j; ``index`` is
    the micro-batch being trained, whose own features are recomputed with gradient and put in place.
    """

    image: list[torch.Tensor]
    texts: list[list[torch.Tensor]]
    index: int = 0

    @property
    def micro_batches(self) -> int:
        return len(self.image)

    def around(self, image: torch.Tensor, texts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The whole step's image [n B, P] and texts (each [n B, P]) with this micro-batch's fresh ones in place."""
        images = [*self.image[: self.index], image, *self.image[self.index + 1:]]
        per_caption = [[t[c] for t in self.texts] for c in range(len(texts))]
        joined = [torch.cat([*cached[: self.index], fresh, *cached[self.index + 1:]]) for cached, fresh in zip(per_caption, texts)]
        return torch.cat(images), joined


def scored_features(step: StepFeatures | None, image: torch.Tensor,
                    texts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """What the contrastive loss scores: this batch's features, or the whole step's with them in place; and
    the share of a temperature's (or bias's) gradient each micro-batch passes back (1 / n)."""
    if step is None:
        return image, texts, 1.0
    image, texts = step.around(image, texts)
    return image, texts, 1.0 / step.micro_batches


def gradient_share(parameter: torch.Tensor, share: float) -> torch.Tensor:
    """``parameter``'s value with ``share`` of its gradient: a temperature or bias is used in full by
    every micro-batch's whole-step loss, so each one passes back only its share of that gradient."""
    if share == 1.0:
        return parameter
    return parameter.detach() + (parameter - parameter.detach()) * share


def share_of_step(loss: torch.Tensor, num_items_in_batch, step: StepFeatures | None) -> torch.Tensor:
    """A whole-step contrastive ``loss`` as the Trainer adds it up (see the module docstring):
    value / (W n) with the gradient of / W, where the Trainer passes ``num_items_in_batch``;
    else as it is (used alone, one batch, or a Trainer that does not pass the count)."""
    if num_items_in_batch is None:
        return loss
    loss = loss / rank_and_world_size()[1]
    n = step.micro_batches if step is not None else 1
    return loss - loss.detach() * (n - 1) / n
