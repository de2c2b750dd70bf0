"""The DALL-E dVAE encoder: images -> discrete visual tokens (FLAVA's masked-image-modelling targets).

OpenAI's DALL-E encoder, as used by FLAVA (and BEiT): a 7x7 stem convolution, four groups of
residual blocks with widths ``hidden_dim * (1, 2, 4, 8)`` and a 2x2 max pool after each of the
first three groups, then ReLU and a 1x1 convolution to ``vocab_size`` logits. An image of
(B, 3, H, W) becomes (B, V, H/8, W/8) logits; the tokens are their argmax over V, e.g. 14 x 14 = 196
tokens for FLAVA's 112 px codebook images.

Each residual block is ``skip(x) + post_gain * residual(x)``, where ``skip`` is the identity (or a
1x1 convolution where the width changes), ``residual`` is ReLU-conv3x3 (to ``out/4`` channels),
ReLU-conv3x3, ReLU-conv3x3, ReLU-conv1x1 (to ``out`` channels), and ``post_gain = 1 / L**2`` with
``L`` the total number of residual blocks (8 for the published encoder, so 1/64).

The encoder expects pixels in [0.1, 0.9]: apply :func:`map_pixels` to [0, 1] pixels first.
"""

from collections.abc import Sequence
import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.layers.patch_embedding import in_weight_dtype
from torchflava.utils.checks import check_bool, check_finite_number, check_int, check_module, require

# DALL-E's logit-Laplace epsilon: pixels in [0, 1] are squeezed into [eps, 1 - eps].
_PIXEL_EPS = 0.1
_NUM_GROUPS = 4
# How far outside [eps, 1 - eps] tokens() accepts pixels: rounding of map_pixels in bf16 (0.9 -> 0.902).
_PIXEL_SLACK = 0.01


def map_pixels(pixels: Tensor) -> Tensor:
    """Squeeze [0, 1] pixels into [0.1, 0.9], the range the dVAE encoder was trained on.

    ``x' = 0.8 * x + 0.1``, elementwise, so any shape works: one image (C, H, W) in a data pipeline
    or a batch (B, C, H, W).

    Args:
        pixels (Tensor): float pixels in [0, 1], any shape.

    Returns:
        Tensor: the mapped pixels, same shape and dtype.

    Raises:
        TypeError: if ``pixels`` is not a floating-point tensor (e.g. uint8 images: divide by 255 first).
    """
    if not isinstance(pixels, Tensor):
        raise TypeError(f"pixels must be a torch.Tensor, got {type(pixels).__name__}")
    if not pixels.is_floating_point():
        raise TypeError(
            f"pixels must be a floating-point tensor with values in [0, 1], got dtype {pixels.dtype} "
            "(convert integer images with pixels.float() / 255 first)"
        )
    return (1 - 2 * _PIXEL_EPS) * pixels + _PIXEL_EPS


class DalleResidualBlock(nn.Module):
    """One dVAE residual block: ``skip(x) + post_gain * residual(x)``.

    Args:
        in_dim (int): input channels.
        out_dim (int): output channels; the residual path is ``out_dim // 4`` wide.
        post_gain (float): scale of the residual path (``1 / num_blocks**2`` in DALL-E).

    Raises:
        TypeError: if a width is not an int.
        ValueError: if a width is not positive, ``out_dim`` < 4 or ``post_gain`` is not a finite number.
    """

    def __init__(self, in_dim: int, out_dim: int, *, post_gain: float) -> None:
        super().__init__()
        check_int("in_dim", in_dim, 1)  # (a float failed inside nn.Conv2d, a str on the comparison)
        if check_int("out_dim", out_dim, 1) < 4:
            raise ValueError(f"out_dim must be >= 4 (the residual path is out_dim // 4 wide), got {out_dim}")
        hidden = out_dim // 4
        self.post_gain = check_finite_number("post_gain", post_gain)  # (a str failed in forward)
        self.skip = nn.Conv2d(in_dim, out_dim, kernel_size=1) if in_dim != out_dim else nn.Identity()
        self.conv1 = nn.Conv2d(in_dim, hidden, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(hidden, out_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x (Tensor): (B, in_dim, H, W).

        Returns:
            Tensor: (B, out_dim, H, W).
        """
        # In place on the convolutions' fresh outputs (their backward needs only their inputs): at
        # the first group's width each pass is a full-size tensor, so fewer allocations count.
        h = self.conv1(F.relu(x))
        h = self.conv2(F.relu(h, inplace=True))
        h = self.conv3(F.relu(h, inplace=True))
        h = self.conv4(F.relu(h, inplace=True))
        return h.mul_(self.post_gain).add_(self.skip(x))  # skip(x) + post_gain * h, the same sums


class DalleEncoder(nn.Module):
    """The dVAE encoder: stem convolution, groups of residual blocks, ReLU + 1x1 head to codebook logits.

    A 2x2 max pool follows every group but the last, so ``len(groups)`` groups downsample by
    ``2 ** (len(groups) - 1)`` (8 for DALL-E's four groups). Build the published encoder with
    :func:`dalle_encoder`.

    The encoder is a fixed tokenizer: with ``freeze=True`` (the default) its parameters do not
    require gradients, so it can sit inside a model being trained (e.g. FLAVA pretraining) or in a
    CPU data pipeline. :meth:`tokens` always runs without autograd.

    Args:
        stem (nn.Conv2d): (B, C, H, W) -> (B, D, H, W), D the first group's input width.
        groups (Sequence[nn.Module]): the residual groups, applied in order.
        head (nn.Conv2d): last group's width -> vocabulary logits (preceded by a ReLU).
        freeze (bool): set ``requires_grad=False`` on every parameter.

    Raises:
        TypeError: if ``stem`` or ``head`` is not an ``nn.Conv2d``, ``groups`` not a sequence of
            ``nn.Module`` or ``freeze`` not a bool.
        ValueError: if ``groups`` is empty.
    """

    def __init__(self, stem: nn.Conv2d, groups: Sequence[nn.Module], head: nn.Conv2d, *, freeze: bool = True) -> None:
        super().__init__()
        for name, conv in (("stem", stem), ("head", head)):
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(f"{name} must be an nn.Conv2d, got {type(conv).__name__}")
        if not isinstance(groups, (Sequence, nn.ModuleList, nn.Sequential)):  # (None failed on len())
            raise TypeError(f"groups must be a sequence of nn.Module, got {type(groups).__name__}")
        if len(groups) == 0:
            raise ValueError("groups must hold at least one group")
        for i, group in enumerate(groups):
            check_module(f"groups[{i}]", group)
        check_bool("freeze", freeze)  # (a str such as "no" froze the encoder by being truthy)
        self.stem = stem
        self.groups = nn.ModuleList(groups)
        self.head = head
        self.pool = nn.MaxPool2d(kernel_size=2)
        if freeze:
            self.requires_grad_(False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DALL-E's initialisation of every convolution inside: weights N(0, 1 / fan_in), zero biases.

        :func:`~torchflava.modules.init.init_weights` calls it after its rule for torch's layers, so that an
        encoder built on the meta device and materialised with ``to_empty`` gets this initialisation too (it
        got the transformer rule's N(0, 0.02)). Pretrained weights are loaded over it.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _init_dalle_conv(module)

    @property
    def in_channels(self) -> int:
        """Image channels C the encoder takes."""
        return self.stem.in_channels

    @property
    def vocab_size(self) -> int:
        """Number of codebook entries V."""
        return self.head.out_channels

    @property
    def downsample(self) -> int:
        """Ratio between the image side and the token-grid side (8 for DALL-E)."""
        return 2 ** (len(self.groups) - 1)

    def _check_pixels(self, pixels: Tensor) -> None:
        if not isinstance(pixels, Tensor):
            raise TypeError(f"pixels must be a torch.Tensor, got {type(pixels).__name__}")
        if not pixels.is_floating_point():
            raise TypeError(
                f"pixels must be a floating-point tensor (mapped with map_pixels), got dtype {pixels.dtype}"
            )
        if pixels.dim() != 4 or pixels.shape[1] != self.in_channels:
            raise ValueError(f"pixels must have shape (B, {self.in_channels}, H, W), got {tuple(pixels.shape)}")
        if pixels.device != self.stem.weight.device:  # (meta pixels into a CPU encoder gave meta "tokens")
            raise ValueError(f"pixels must be on the encoder's device {self.stem.weight.device}, got {pixels.device}")
        h, w = pixels.shape[-2:]
        f = self.downsample
        if h == 0 or w == 0 or h % f or w % f:
            raise ValueError(f"pixels height and width must be positive multiples of {f}, got {h}x{w}")

    def forward(self, pixels: Tensor) -> Tensor:
        """Codebook logits for each cell of the token grid.

        Args:
            pixels (Tensor): (B, C, H, W) float, mapped into [0.1, 0.9] with :func:`map_pixels`
                (not checked); H and W multiples of :attr:`downsample`. Of another floating dtype than
                the encoder's, they are cast to it (under autocast, fp64 ones to the encoder's dtype first).

        Returns:
            Tensor: logits (B, V, H / 8, W / 8) (for four groups).

        Raises:
            TypeError: if ``pixels`` is not a floating-point tensor.
            ValueError: on a wrong number of dimensions or channels, a side not divisible by
                :attr:`downsample`, or pixels on another device than the encoder.
        """
        self._check_pixels(pixels)
        x = self.stem(in_weight_dtype(pixels, self.stem.weight))  # (the conv refused another dtype)
        last = len(self.groups) - 1
        for i, group in enumerate(self.groups):
            x = group(x)
            if i < last:
                x = self.pool(x)
        return self.head(F.relu(x))

    @torch.no_grad()
    def tokens(self, pixels: Tensor) -> Tensor:
        """Discrete visual tokens: the argmax of the logits, row-major over the token grid.

        Runs without autograd. Under ``torch.autocast`` the logits are computed in the lower
        precision, which can flip near-tied argmaxes; run in fp32 for reproducible targets.

        Args:
            pixels (Tensor): (B, C, H, W) float, mapped with :func:`map_pixels`.

        Returns:
            Tensor: (B, H/8 * W/8) int64 token ids in [0, V).

        Raises:
            TypeError: if ``pixels`` is not a floating-point tensor.
            ValueError: as :meth:`forward`, or (on the CPU) if a pixel is NaN or outside [0.09, 0.91] (not
                mapped with :func:`map_pixels`; 0.01 of slack for rounding).
        """
        self._check_pixels(pixels)
        if pixels.device.type == "cpu":  # (unmapped [0, 255] or normalised pixels, or NaN, were tokenised
            # silently; on a GPU the check would wait for the device, and meta tensors hold no values)
            low, high = _PIXEL_EPS - _PIXEL_SLACK, 1 - _PIXEL_EPS + _PIXEL_SLACK
            expected = f"pixels must be finite and mapped into [{_PIXEL_EPS}, {1 - _PIXEL_EPS}] with map_pixels"
            require(
                ((pixels >= low) & (pixels <= high)).all(),  # (NaN fails both)
                lambda: f"{expected}, got values in [{float(pixels.min())}, {float(pixels.max())}]",
                f"{expected}, got values outside it",
            )
        return self(pixels).argmax(dim=1).flatten(1)


def _init_dalle_conv(conv: nn.Conv2d) -> None:
    """DALL-E's initialisation: weights N(0, 1 / fan_in), zero bias."""
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.normal_(conv.weight, std=1 / math.sqrt(fan_in))
    if conv.bias is not None:  # (an injected convolution may have none)
        nn.init.zeros_(conv.bias)


def dalle_encoder(
    *,
    hidden_dim: int = 256,
    blocks_per_group: int = 2,
    vocab_size: int = 8192,
    in_channels: int = 3,
    freeze: bool = True,
) -> DalleEncoder:
    """The DALL-E dVAE encoder; the defaults are the published one (53.8M parameters, vocabulary 8192).

    Four groups of ``blocks_per_group`` residual blocks, widths ``hidden_dim * (1, 2, 4, 8)``,
    residual scale ``1 / (4 * blocks_per_group)**2``; weights initialised as in DALL-E
    (N(0, 1/fan_in), zero biases) — load the pretrained weights with
    ``torchflava.models.flava.convert_codebook.load_codebook_weights``.

    Args:
        hidden_dim (int): width of the stem and the first group.
        blocks_per_group (int): residual blocks per group.
        vocab_size (int): codebook entries V.
        in_channels (int): image channels C.
        freeze (bool): parameters do not require gradients.

    Returns:
        DalleEncoder: (B, C, H, W) -> logits (B, V, H/8, W/8); ``tokens`` gives (B, H/8 * W/8).

    Raises:
        TypeError: if a size is not an int or ``freeze`` not a bool.
        ValueError: if ``hidden_dim`` < 4 or another size is < 1.
    """
    if check_int("hidden_dim", hidden_dim, 1) < 4:
        raise ValueError(f"hidden_dim must be >= 4 (residual paths are hidden_dim // 4 wide), got {hidden_dim}")
    sizes = {"blocks_per_group": blocks_per_group, "vocab_size": vocab_size, "in_channels": in_channels}
    for name, value in sizes.items():
        check_int(name, value, 1)
    check_bool("freeze", freeze)  # (a str such as "no" froze the encoder by being truthy)
    post_gain = 1 / (_NUM_GROUPS * blocks_per_group) ** 2
    widths = [hidden_dim * 2**i for i in range(_NUM_GROUPS)]  # 1, 2, 4, 8 x hidden_dim
    groups = []
    in_dim = hidden_dim
    for width in widths:
        blocks = [
            DalleResidualBlock(in_dim if i == 0 else width, width, post_gain=post_gain) for i in range(blocks_per_group)
        ]
        groups.append(nn.Sequential(*blocks))
        in_dim = width
    stem = nn.Conv2d(in_channels, hidden_dim, kernel_size=7, padding=3)
    head = nn.Conv2d(widths[-1], vocab_size, kernel_size=1)
    encoder = DalleEncoder(stem, groups, head, freeze=freeze)
    encoder.reset_parameters()
    return encoder
