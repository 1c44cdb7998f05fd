"""A small, configurable 2D U-Net (Ronneberger et al., 2015).

The contracting path learns *what* is in the image; the skip connections
restore *where*. Convolutions are 3x3 with zero padding ("same"), so the output
has the input's size when the input is a multiple of ``2**depth``;
:meth:`UNet.forward` pads any other size (reflect) and crops back.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "InferenceUNet", "NORMALIZATIONS"]

NORMALIZATIONS = ("batch", "group", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none"),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """2D U-Net mapping ``(N, in_channels, Y, X)`` to ``(N, out_channels, Y, X)`` logits.

    Parameters
    ----------
    in_channels : int
        Number of input channels (1 for the bundled grey-scale model).
    out_channels : int
        Number of output classes (3: background, cell, boundary).
    depth : int
        Number of 2x down-samplings (the input grid is ``2**depth``).
    base_channels : int
        Feature maps at full resolution; doubled at each level.
    norm : {"batch", "group", "instance", "none"}
        Normalisation after each convolution. ``"batch"`` in evaluation mode
        (fixed statistics) is local, so tiled inference equals whole-image
        inference exactly; ``"group"``/``"instance"`` compute statistics over
        the whole input (per tile when tiled).

    Notes
    -----
    The output is logits; apply ``softmax(dim=1)`` for probabilities.
    Inputs whose size is not a multiple of ``2**depth`` are reflect-padded
    and the output is cropped back to the input size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        depth: int = 3,
        base_channels: int = 16,
        norm: str = "batch",
    ):
        super().__init__()
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("depth", depth, 1),
            ("base_channels", base_channels, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"UNet: {name} must be an integer >= {low}, got {value!r}.")
        if depth > 6:
            raise ValueError(f"UNet: depth must be at most 6, got {depth}.")
        if norm not in NORMALIZATIONS:
            raise ValueError(f"UNet: norm must be one of {NORMALIZATIONS}, got {norm!r}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.base_channels = base_channels
        self.norm = norm

        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(_DoubleConv(previous, width, norm))
            previous = width
        self.bottleneck = _DoubleConv(widths[-2], widths[-1], norm)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.upsamplers.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.decoders.append(_DoubleConv(2 * widths[level], widths[level], norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def grid(self) -> int:
        """Spatial sizes must be multiples of this (``2**depth``) to avoid padding."""
        return 2**self.depth

    @property
    def receptive_radius(self) -> int:
        """Pixels on each side that can influence one output pixel.

        Each 3x3 convolution at level ``l`` adds ``2**l``; each 2x2 pooling and
        transposed convolution at level ``l`` adds ``2**l``.
        """
        radius = 0
        for level in range(self.depth):
            radius += 2 * 2**level  # encoder double conv
            radius += 2**level  # max pooling
            radius += 2 * 2**level  # decoder double conv
            radius += 2**level  # transposed convolution
        radius += 2 * 2**self.depth  # bottleneck
        return radius

    @property
    def halo(self) -> int:
        """Tile overlap (per side) that makes tiled inference exact: the receptive
        radius rounded up to the down-sampling grid."""
        return int(math.ceil(self.receptive_radius / self.grid) * self.grid)

    def config(self) -> dict:
        """Architecture arguments, enough to rebuild this network."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "norm": self.norm,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(
                f"UNet expects a 4D tensor (N, C, Y, X), got shape {tuple(x.shape)}; add batch/channel axes with x[None, None] for a single 2D image."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet was built for {self.in_channels} input channel(s), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); convert the image or use a matching model."
            )
        return _on_grid(self._forward_on_grid, x, self.grid)

    def _forward_on_grid(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = _encode(self.encoders, self.bottleneck, x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, upsample(x)], dim=1))
        return self.head(x)

    def for_inference(self, device=None, dtype=None, **options) -> InferenceUNet:
        """A fast, inference-only copy of this network (see :class:`InferenceUNet`, which takes ``options``).

        The network itself is never modified.
        """
        return InferenceUNet(self, device=device, dtype=dtype, **options)


def _pad_to_grid(x: torch.Tensor, grid: int) -> tuple[torch.Tensor, int, int]:
    """Pad the last two axes up to a multiple of ``grid`` (reflect, or replicate when too small)."""
    height, width = x.shape[-2:]
    pad_y = (-height) % grid
    pad_x = (-width) % grid
    if pad_y or pad_x:
        mode = "reflect" if height > pad_y and width > pad_x else "replicate"
        x = F.pad(x, (0, pad_x, 0, pad_y), mode=mode)
    return x, pad_y, pad_x


def _on_grid(forward, x: torch.Tensor, grid: int) -> torch.Tensor:
    """``forward(x)`` on ``x`` padded to a multiple of ``grid`` (see :func:`_pad_to_grid`), cropped back to ``x``'s size."""
    height, width = x.shape[-2:]
    x, pad_y, pad_x = _pad_to_grid(x, grid)
    x = forward(x)
    return x[..., :height, :width] if pad_y or pad_x else x


def _encode(encoders: nn.ModuleList, bottleneck: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The contracting path: ``(bottleneck output, skip tensors from the finest level down)``."""
    skips = []
    for encoder in encoders:
        x = encoder(x)
        skips.append(x)
        x = F.max_pool2d(x, 2)
    return bottleneck(x), skips


def _fold_batchnorm(conv: nn.Conv2d, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(conv(x))`` as one convolution (BatchNorm with its running statistics)."""
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64, device=weight.device)
    if isinstance(norm, nn.BatchNorm2d):
        scale = torch.ones_like(norm.running_var, dtype=torch.float64) if norm.weight is None else norm.weight.detach().double()
        shift = torch.zeros_like(scale) if norm.bias is None else norm.bias.detach().double()
        scale = scale / torch.sqrt(norm.running_var.double() + norm.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - norm.running_mean.double()) * scale + shift
    return weight.float(), bias.float()


@functools.cache
def _mkldnn_ops():
    """oneDNN's fused convolution ops, if this torch build has them and they give the plain
    result; else None (the plain ``F.conv2d`` path is used). Checked once, on first use
    (not at import):
    ``torch.ops.mkldnn._convolution_pointwise`` (convolution + ReLU) and the in-place
    ``_convolution_pointwise_.binary`` (``other = relu(conv(x) + other)``)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        unary = torch.ops.mkldnn._convolution_pointwise.default
        binary_ = torch.ops.mkldnn._convolution_pointwise_.binary
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(1, 2, 6, 6, generator=generator).contiguous(memory_format=torch.channels_last)
        other = torch.rand(1, 3, 6, 6, generator=generator).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(3, 2, 3, 3, generator=generator).contiguous(memory_format=torch.channels_last)
        bias = torch.randn(3, generator=generator)
        plain = F.conv2d(x, weight, bias, padding=1)
        expected = (plain + other).relu()
        ok = torch.allclose(unary(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""), plain.relu(), atol=1e-5)
        fused = binary_(other, x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, "relu", [], "")
        ok = ok and fused.data_ptr() == other.data_ptr() and torch.allclose(other, expected, atol=1e-5)
    except (AttributeError, RuntimeError, TypeError):  # private ops: absent or changed in this build
        return None
    return (unary, binary_) if ok else None


def _fused_ops(x: torch.Tensor, weight: torch.Tensor):
    """oneDNN's ``(convolution + ReLU, in-place convolution + add + ReLU)`` ops when they apply to ``x``/``weight``, else None."""
    if x.device.type != "cpu" or x.dtype != weight.dtype or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    if x.dtype == torch.bfloat16:  # oneDNN's bf16 kernels need AVX512-BF16/AMX; elsewhere aten's own path
        from ..device import cpu_bf16_supported

        if not cpu_bf16_supported():
            return None
    return _mkldnn_ops()


class _ConvReLU(nn.Module):
    """3x3 convolution (+ folded BatchNorm) + ReLU; one fused oneDNN call on the CPU when available."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, relu: bool = True, fused: bool = True):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.relu = relu
        self.fused = fused
        self.padding = [weight.shape[-1] // 2] * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = _fused_ops(x, self.weight) if self.fused else None
        if ops is not None:
            return ops[0](x, self.weight, self.bias, self.padding, [1, 1], [1, 1], 1, "relu" if self.relu else "none", [], "")
        y = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        return torch.relu_(y) if self.relu else y


class _SkipConvReLU(nn.Module):
    """``relu(conv(cat([skip, up])))`` without building the concatenation on the CPU:
    ``conv(up)`` with the ``up`` half of the weights, then one fused in-place call
    adds ``conv(skip)`` with the other half and the bias, and applies the ReLU."""

    def __init__(self, conv: _ConvReLU, skip_channels: int):
        super().__init__()
        self.conv = conv
        self.skip_channels = skip_channels
        self.register_buffer("weight_skip", conv.weight[:, :skip_channels].clone())
        self.register_buffer("weight_up", conv.weight[:, skip_channels:].clone())

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ops = _fused_ops(up, self.weight_up) if self.conv.fused else None
        if ops is not None:
            unary, binary_ = ops
            pad = self.conv.padding
            partial = unary(up, self.weight_up, None, pad, [1, 1], [1, 1], 1, "none", [], "")
            # in place: partial = relu(conv(skip) + bias + partial); no new full-size buffer
            return binary_(partial, skip, self.weight_skip, self.conv.bias, pad, [1, 1], [1, 1], 1, "add", 1.0, "relu", [], "")
        return self.conv(torch.cat([skip, up], dim=1))


class InferenceUNet(nn.Module):
    """Inference-only copy of a :class:`UNet`: same outputs, fewer memory passes.

    * BatchNorm (running statistics, i.e. evaluation mode) is folded into the
      preceding convolution, and each convolution + ReLU is one call
      (a fused oneDNN primitive on the CPU);
    * on the CPU the decoders never build the skip/up-sampled concatenation:
      the first convolution runs on each half and the halves are summed
      inside the second call (``split_skip_concat``);
    * weights are stored channels-last, optionally in ``dtype`` (bfloat16 on
      CPUs with native bf16 instructions); inputs are converted on entry and
      the logits come back in that dtype;
    * skip connections are released as soon as they are used.

    Networks with GroupNorm/InstanceNorm keep their (copied) normalisation
    layers, which cannot be folded. The source network is never modified;
    build a new copy after changing its weights.

    Parameters
    ----------
    network : UNet
    device : torch.device or str, optional
        Where the copy lives (default: where ``network`` is).
    dtype : torch.dtype, optional
        Weight/activation dtype (default float32).
    fused : bool
        Use oneDNN's fused convolution + ReLU calls on the CPU when this torch
        build has them (default True; False: ``F.conv2d`` + ReLU, for ablations).
    split_skip_concat : bool
        Replace each decoder's concatenation by two convolutions summed in a
        fused call (default True; needs ``fused``).
    """

    def __init__(self, network: UNet, device=None, dtype=None, *, fused: bool = True, split_skip_concat: bool = True):
        super().__init__()
        if not isinstance(network, UNet):
            raise TypeError(f"InferenceUNet needs a UNet, got {type(network).__name__}.")
        first = next(network.parameters())
        device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or torch.float32
        for name in ("in_channels", "out_channels", "depth", "base_channels", "norm"):
            setattr(self, name, getattr(network, name))
        self.grid, self.halo, self.receptive_radius = network.grid, network.halo, network.receptive_radius
        self.fused, self.split_skip_concat = bool(fused), bool(split_skip_concat)
        self.encoders = nn.ModuleList(self._double(block) for block in network.encoders)
        self.bottleneck = self._double(network.bottleneck)
        self.upsamplers = nn.ModuleList()
        # skip_init: no random initialisation (the global RNG is left alone), the weights are copied in
        for upsample in network.upsamplers:
            copy = nn.utils.skip_init(nn.ConvTranspose2d, upsample.in_channels, upsample.out_channels, 2, stride=2, device=first.device)
            copy.load_state_dict(upsample.state_dict())
            self.upsamplers.append(copy)
        self.decoders = nn.ModuleList(self._double(block, skip_channels=block[0].in_channels // 2) for block in network.decoders)
        self.head = nn.utils.skip_init(nn.Conv2d, network.head.in_channels, network.head.out_channels, 1, device=first.device)
        self.head.load_state_dict(network.head.state_dict())
        self.requires_grad_(False)
        # channels-last suits oneDNN (CPU) and cuDNN; MPS keeps the default layout
        self.memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        self.to(device=device, dtype=self.dtype, memory_format=self.memory_format)
        self.eval()

    def _double(self, block: nn.Sequential, skip_channels: int = 0) -> nn.Module:
        conv1, norm1, _, conv2, norm2, _ = block
        if all(isinstance(n, (nn.BatchNorm2d, nn.Identity)) for n in (norm1, norm2)):
            first = _ConvReLU(*_fold_batchnorm(conv1, norm1), fused=self.fused)
            if skip_channels and self.split_skip_concat:
                first = _SkipConvReLU(first, skip_channels)
            return nn.Sequential(first, _ConvReLU(*_fold_batchnorm(conv2, norm2), fused=self.fused))
        import copy

        return copy.deepcopy(block).requires_grad_(False).eval()

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("InferenceUNet is for inference only; fine-tune the UNet it was built from.")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"InferenceUNet expects (N, {self.in_channels}, Y, X), got shape {tuple(x.shape)}.")
        return _on_grid(self._forward_on_grid, x, self.grid)

    def _forward_on_grid(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = _encode(self.encoders, self.bottleneck, x.to(self.dtype).contiguous(memory_format=self.memory_format))
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            skip = skips.pop()
            if isinstance(decoder[0], _SkipConvReLU):
                x = decoder[0](skip, upsample(x))
                del skip
                x = decoder[1](x)
            else:
                x = torch.cat([skip, upsample(x)], dim=1)
                del skip
                x = decoder(x)
        return self.head(x)
