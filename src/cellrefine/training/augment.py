"""Data augmentation of training crops: flips, 90° turns, intensity jitter, elastic deformation."""

from __future__ import annotations

__all__ = ["augment"]


def augment(images, semantic, weights, generator, elastic: float = 0.5, teacher=None):
    """Random flips, 90° rotations, intensity jitter and elastic deformation of a batch.

    Parameters
    ----------
    images : (N, C, Y, X) float tensor
    semantic : (N, Y, X) long tensor
    weights : (N, Y, X) float tensor
    generator : torch.Generator
        The only source of randomness (the global generator is not used).
    elastic : float
        Probability of an elastic deformation per crop.
    teacher : (N, 3, Y, X) tensor, optional
        Probabilities, moved with the image and never intensity-jittered.

    Returns
    -------
    tuple
        ``(images, semantic, weights)`` or, with a teacher, ``(images, semantic, weights, teacher)``.
    """
    import torch
    from torch.nn import functional as F

    n = images.shape[0]
    n_image_channels = images.shape[1]
    if teacher is not None:
        images = torch.cat([images, teacher.to(images)], dim=1)
    out_i, out_s, out_w = [], [], []
    rand = torch.rand(n, 6, generator=generator)
    for k in range(n):
        img, sem, wt = images[k], semantic[k], weights[k]
        if rand[k, 0] < 0.5:
            img, sem, wt = img.flip(-1), sem.flip(-1), wt.flip(-1)
        if rand[k, 1] < 0.5:
            img, sem, wt = img.flip(-2), sem.flip(-2), wt.flip(-2)
        turns = int(rand[k, 2] * 4) % 4
        if turns:
            img, sem, wt = (torch.rot90(t, turns, dims=(-2, -1)) for t in (img, sem, wt))
        out_i.append(img)
        out_s.append(sem)
        out_w.append(wt)
    images, semantic, weights = torch.stack(out_i), torch.stack(out_s), torch.stack(out_w)
    if teacher is not None:
        images, teacher = images[:, :n_image_channels], images[:, n_image_channels:]
    # intensity: contrast, brightness, gamma-like curve, noise
    scale = (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=generator)).to(images)
    shift = (0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)).to(images)
    images = images * scale + shift
    noise = (0.03 * torch.rand(n, 1, 1, 1, generator=generator)).to(images)
    images = images + noise * torch.randn(images.shape, generator=generator).to(images)
    # elastic deformation: smooth random displacement (coarse 4x4 grid, up-sampled)
    deform = (torch.rand(n, generator=generator) < elastic).to(images.device)
    if deform.any():
        size = images.shape[-1]
        coarse = torch.randn(n, 2, 4, 4, generator=generator).to(images) * (6.0 / size)
        coarse = coarse * deform[:, None, None, None]
        displacement = F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=True)
        ys = torch.linspace(-1, 1, images.shape[-2], device=images.device)
        xs = torch.linspace(-1, 1, images.shape[-1], device=images.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([grid_x, grid_y], dim=-1)[None] + displacement.permute(0, 2, 3, 1)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        if teacher is not None:
            teacher = F.grid_sample(teacher, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
        stacked = torch.stack([semantic.to(images.dtype), weights], dim=1)
        stacked = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=True)
        semantic, weights = stacked[:, 0].round().long(), stacked[:, 1]
    if teacher is not None:
        return images, semantic, weights, teacher
    return images, semantic, weights
