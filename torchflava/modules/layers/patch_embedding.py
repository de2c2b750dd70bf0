"""ViT patch embedding: (B, C, H, W) -> (B, 1 + N, D) with a CLS token and learned positions, or
(B, N, D) without the CLS token (a ViT pooled over its patches, e.g. by their mean).

N = (H / patch_size) * (W / patch_size). An optional boolean patch mask (B, N), ``True = masked``,
replaces those patch embeddings by a learned mask token before positions are added (masked image
modelling). Images whose patch grid differs from the grid the positions were learned on get
bicubically interpolated positions. An optional norm after the positions is CLIP's ``ln_pre``.
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from torchflava.modules.layers.hooks import hooked
from torchflava.modules.layers.transformer import check_parts
from torchflava.utils.checks import check_bool, check_dropout, check_fits_in_memory, check_int, require


def in_weight_dtype(pixels: Tensor, weight: Tensor) -> Tensor:
    """``pixels`` in ``weight``'s floating dtype, for a conv that takes them: fp32 pixels into a bf16,
    fp16 or fp64 model, fp16 / bf16 / fp64 ones into an fp32 one. Under autocast fp32 pixels stay (autocast
    casts them) and only fp64 ones are cast (autocast leaves fp64 alone)."""
    if pixels.dtype != weight.dtype and (
        not torch.is_autocast_enabled(pixels.device.type) or pixels.dtype == torch.float64
    ):
        return pixels.to(weight.dtype)
    return pixels


class PatchEmbedding(nn.Module):
    """Conv patchify, CLS token, learned positions, optional mask token.

    Args:
        image_size (int): side of the square images the positions are learned for.
        patch_size (int): side of a square patch; must divide ``image_size``.
        in_channels (int): image channels C.
        embed_dim (int): width D.
        use_mask_token (bool): create a learned mask token so ``patch_mask`` can be given.
        use_cls_token (bool): prepend a learned CLS token (with a position of its own); without it the
            output is the N patch embeddings alone.
        dropout (float): dropout on the embeddings (after the positions are added).
        conv_bias (bool): whether the patch projection has a bias (CLIP's has none).
        norm (Optional[nn.Module]): applied last, to the (B, 1 + N, D) embeddings (CLIP's pre-norm);
            none when None.

    Raises:
        TypeError: if a size is not an int, ``norm`` neither an nn.Module nor None, ``dropout`` not a
            number, or ``use_mask_token``, ``use_cls_token`` or ``conv_bias`` not a bool.
        ValueError: if a size is below 1, ``patch_size`` does not divide ``image_size``, ``norm``'s width
            is not ``embed_dim`` (where it tells it) or ``dropout`` is not in [0, 1).
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        embed_dim: int,
        *,
        use_mask_token: bool = False,
        use_cls_token: bool = True,
        dropout: float = 0.0,
        conv_bias: bool = True,
        norm: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        for name, value in (("image_size", image_size), ("patch_size", patch_size), ("in_channels", in_channels)):
            check_int(name, value, 1)
        check_int("embed_dim", embed_dim, 1)
        check_parts("PatchEmbedding", dict(norm=norm), [("embed_dim", embed_dim)], optional=["norm"])
        check_dropout("dropout", dropout)
        check_bool("use_mask_token", use_mask_token)
        check_bool("use_cls_token", use_cls_token)
        check_bool("conv_bias", conv_bias)
        if image_size % patch_size != 0:
            raise ValueError(f"patch_size must divide image_size, got patch_size={patch_size}, image_size={image_size}")
        positions = (image_size // patch_size) ** 2 + int(use_cls_token)
        sizes = dict(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim)
        check_fits_in_memory("PatchEmbedding", (positions + in_channels * patch_size**2) * embed_dim, sizes)
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=conv_bias)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim)) if use_cls_token else None
        self.num_prefix_tokens = int(use_cls_token)  # positions before the patches' (0 or 1)
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_prefix_tokens + self.num_patches, embed_dim))
        self.mask_token = nn.Parameter(torch.empty(1, 1, embed_dim)) if use_mask_token else None
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.Identity() if norm is None else norm
        self.reset_parameters()

    def reset_parameters(self, *, std: float = 0.02) -> None:
        """Truncated-normal (``std``) CLS token, positions and mask token (the conv inits itself)."""
        for p in (self.cls_token, self.pos_embed, self.mask_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=std)

    def _check_images(self, images: Tensor) -> tuple[int, int]:
        if not isinstance(images, Tensor):
            raise TypeError(f"image must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"image must be a floating-point tensor, got dtype {images.dtype}")
        if images.device != self.proj.weight.device:  # (torch's error names neither tensor)
            raise ValueError(f"image must be on the model's device {self.proj.weight.device}, got {images.device}")
        if images.dim() != 4 or images.shape[1] != self.in_channels or images.shape[0] == 0:
            raise ValueError(
                f"image must have shape (B, {self.in_channels}, H, W) with B >= 1, got {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size or h == 0 or w == 0:
            raise ValueError(
                f"image height and width must be positive multiples of patch_size={self.patch_size}, got {h}x{w}"
            )
        return h // self.patch_size, w // self.patch_size

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """Positions for a ``grid_h x grid_w`` patch grid, interpolated when it is not the learned grid.

        Args:
            grid_h (int): patch rows.
            grid_w (int): patch columns.

        Returns:
            Tensor: (1, 1 + grid_h * grid_w, D); (1, grid_h * grid_w, D) without the CLS token.
        """
        if grid_h == grid_w == self.grid_size:
            return self.pos_embed
        prefix = self.num_prefix_tokens
        cls_pos, patch_pos = self.pos_embed[:, :prefix], self.pos_embed[:, prefix:]
        d = patch_pos.shape[-1]
        # (1, N, D) -> (1, D, g, g) -> (1, D, gh, gw) -> (1, gh * gw, D)
        grid = patch_pos.reshape(1, self.grid_size, self.grid_size, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, d)], dim=1)

    def forward(self, images: Tensor, *, patch_mask: Optional[Tensor] = None) -> Tensor:
        """Embed images.

        Args:
            images (Tensor): (B, C, H, W) float; H and W multiples of ``patch_size``.
            patch_mask (Optional[Tensor]): (B, N) or (B, H/p, W/p) bool, ``True = masked``.

        Returns:
            Tensor: (B, 1 + N, D); (B, N, D) without the CLS token.

        Raises:
            TypeError: if ``images`` is not a float tensor or ``patch_mask`` is not boolean/integer.
            ValueError: on a wrong channel count, a size not divisible by the patch, ``images`` not on the
                model's device, a ``patch_mask`` of the wrong shape or device, or a ``patch_mask`` without a
                mask token.
        """
        grid_h, grid_w = self._check_images(images)
        x = self._project(in_weight_dtype(images, self.proj.weight), grid_h, grid_w)
        if patch_mask is not None:
            x = self._apply_patch_mask(x, patch_mask, grid_h, grid_w)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.dropout(x + self.position_embedding(grid_h, grid_w)))

    def _project(self, images: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """(B, C, H, W) -> (B, N, D), patches in row-major grid order.

        On the CPU the patchify is one GEMM over the (B N, C p p) patch matrix, the same products
        as the strided conv (summed in another order): oneDNN's conv backward takes ~4x the GEMM's
        time for the weight gradient (bf16 train step of a ViT-B/16 embedding, 2 cores: 16.9 against
        3.9 ms; inference 3.2 against 1.7 ms). Elsewhere the conv, as its kernels suit the device.
        """
        if not self._patch_gemm_stands_for_proj(images):
            return self.proj(images).flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, N, D)
        b, c, p = images.shape[0], self.in_channels, self.patch_size
        # (B, C, gh, p, gw, p) -> (B, gh, gw, C, p, p): each patch's pixels in the conv weight's order
        patches = images.reshape(b, c, grid_h, p, grid_w, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, grid_h * grid_w, c * p * p)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)

    def _patch_gemm_stands_for_proj(self, images: Tensor) -> bool:
        """Whether the GEMM computes what calling ``self.proj`` would: CPU tensors, ``proj`` a plain
        ``nn.Conv2d`` whose kernel and stride are the patch (no padding, dilation or groups; no
        parametrization, which changes its class), and no hook that the call would have run."""
        proj, p = self.proj, self.patch_size
        return (
            images.device.type == "cpu"
            and type(proj) is nn.Conv2d
            and type(images) is Tensor
            and type(proj.weight) in (Tensor, nn.Parameter)
            and proj.kernel_size == proj.stride == (p, p)
            and proj.padding == (0, 0)
            and proj.dilation == (1, 1)
            and proj.groups == 1
            and not torch.jit.is_tracing()
            and not hooked(proj)
        )

    def _apply_patch_mask(self, x: Tensor, patch_mask: Tensor, grid_h: int, grid_w: int) -> Tensor:
        if self.mask_token is None:
            raise ValueError("patch_mask was given but this PatchEmbedding has no mask token (use_mask_token=False)")
        check_patch_mask(patch_mask, x.shape[0], (grid_h, grid_w))
        if patch_mask.device != x.device:  # (a meta mask failed inside torch.where, naming neither tensor)
            raise ValueError(f"patch_mask must be on the image's device {x.device}, got {patch_mask.device}")
        patch_mask = patch_mask.reshape(x.shape[0], -1)
        return torch.where(patch_mask.bool().unsqueeze(-1), self.mask_token.to(x.dtype), x)


def check_patch_mask(patch_mask: object, batch: int, grid: tuple[int, int], *, name: str = "patch_mask") -> None:
    """Raise unless ``patch_mask`` masks the patches of ``batch`` images of ``grid`` (rows, columns) patches.

    Args:
        patch_mask (object): expected a bool (or 0/1 integer) tensor (B, N) or (B, H/p, W/p).
        batch (int): B, the number of images.
        grid (tuple[int, int]): H/p and W/p.
        name (str): the argument's name in the messages.

    Raises:
        TypeError: if it is not a bool or integer tensor.
        ValueError: if its shape is neither, or (on the CPU) an integer one holds other values than 0 and 1.
    """
    if not isinstance(patch_mask, Tensor) or patch_mask.is_floating_point() or patch_mask.is_complex():
        got = patch_mask.dtype if isinstance(patch_mask, Tensor) else type(patch_mask).__name__
        raise TypeError(f"{name} must be a bool (or 0/1 integer) tensor, got {got}")
    n = grid[0] * grid[1]
    if tuple(patch_mask.shape) not in ((batch, n), (batch, *grid)):
        raise ValueError(
            f"{name} must have shape (B, N) = ({batch}, {n}) or (B, H/p, W/p) = ({batch}, {grid[0]}, {grid[1]}) "
            f"for these images, got {tuple(patch_mask.shape)}"
        )
    if patch_mask.dtype != torch.bool and patch_mask.numel() and patch_mask.device.type == "cpu":  # (a GPU would wait)
        require(  # (2 or -1 were taken as masked)
            ((patch_mask == 0) | (patch_mask == 1)).all(),
            lambda: f"{name} must hold only 0 and 1, got the values {sorted(set(patch_mask.unique().tolist()))}",
            f"{name} must hold only 0 and 1",
        )


def patch_geometry(proj: Optional[Tensor], positions: Optional[Tensor]) -> dict[str, int]:
    """The ``patch_size`` and ``image_size`` a checkpoint's patch projection (D, C, p, p) and position
    table (..., 1 + N, D: a CLS and a square grid of N patches) imply; {} where either is missing or
    their shapes imply no such geometry. How a bare weights file, with no config beside it, says its
    image size."""
    if proj is None or positions is None or proj.dim() != 4 or proj.shape[-1] != proj.shape[-2] or positions.dim() < 2:
        return {}
    patches = positions.shape[-2] - 1  # the CLS aside
    grid = math.isqrt(max(patches, 0))
    if grid == 0 or grid * grid != patches:
        return {}
    return {"patch_size": proj.shape[-1], "image_size": grid * proj.shape[-1]}
