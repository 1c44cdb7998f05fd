"""The training loss: pixel-weighted cross-entropy, soft Dice on reviewed pixels, distillation on the others."""

from __future__ import annotations

__all__ = ["weighted_loss"]


def weighted_loss(logits, semantic, weights, dice: float = 0.0, teacher=None, distill: float = 0.0):
    """The training loss of one batch.

    Pixel-weighted cross-entropy (normalised by the weight sum), plus ``dice``
    x a soft Dice loss over the weighted (reviewed) pixels of the cell and
    boundary classes, plus ``distill`` x the mean KL divergence from
    ``teacher`` (the starting model's probabilities) over the *unreviewed*
    pixels (weight 0) where the teacher is non-zero.

    Parameters
    ----------
    logits : (N, 3, Y, X) tensor
    semantic : (N, Y, X) long tensor
        Target classes.
    weights : (N, Y, X) float tensor
        Loss weights; 0 = not reviewed.
    dice : float
    teacher : (N, 3, Y, X) tensor, optional
        Probabilities to keep on unreviewed pixels (all zero where there are none).
    distill : float

    Returns
    -------
    scalar tensor
    """
    from torch.nn import functional as F

    ce = F.cross_entropy(logits.float(), semantic, reduction="none")
    total_weight = weights.sum().clamp_min(1e-6)
    loss = (ce * weights).sum() / total_weight
    if dice > 0:
        probabilities = logits.float().softmax(dim=1)
        reviewed = (weights > 0).to(probabilities.dtype)
        one_hot = F.one_hot(semantic.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
        dims = (0, 2, 3)
        intersection = (probabilities * one_hot * reviewed[:, None]).sum(dims)
        denominator = ((probabilities + one_hot) * reviewed[:, None]).sum(dims)
        dice_per_class = (2 * intersection + 1) / (denominator + 1)
        loss = loss + dice * (1 - dice_per_class[1:].mean())
    if teacher is not None and distill > 0:
        unreviewed = (weights == 0) & (teacher.sum(dim=1) > 0.5)
        if unreviewed.any():
            log_p = F.log_softmax(logits.float(), dim=1)
            target = teacher.float().clamp_min(1e-6)
            kl = (target * (target.log() - log_p)).sum(dim=1)
            loss = loss + distill * (kl * unreviewed).sum() / unreviewed.sum()
    return loss
