"""A set of 3D Gaussians (positions in cm) and the spherical-harmonics colour model of 3DGS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# Real spherical-harmonics basis constants as used by 3D Gaussian Splatting (Kerbl et al. 2023) and gsplat.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
SH_SIZES = (1, 4, 9, 16)  # coefficients per colour channel for SH degree 0..3


def rgb_to_sh_dc(rgb: Tensor) -> Tensor:  # [..., 3] -> [..., 3]
    """RGB in [0, 1] to the degree-0 SH coefficient that renders it ((c - 0.5) / C0)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(
    coeffs: Tensor,  # [N, K, 3]
    dirs: Tensor,  # [N, 3] viewing directions (camera to Gaussian), need not be unit length
) -> Tensor:  # [N, 3]
    """View-dependent colour of SH coefficients (degree sqrt(K) - 1): SH . basis + 0.5, clamped at 0."""
    k = coeffs.shape[-2]
    if k not in SH_SIZES:
        raise ValueError(f"SH coefficients must have K in {SH_SIZES} per channel, got K={k}")
    dirs = torch.nn.functional.normalize(dirs.to(coeffs.dtype), dim=-1)
    x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
    c = coeffs
    out = SH_C0 * c[:, 0]
    if k > 1:
        out = out - SH_C1 * y * c[:, 1] + SH_C1 * z * c[:, 2] - SH_C1 * x * c[:, 3]
    if k > 4:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out = (
            out
            + SH_C2[0] * xy * c[:, 4]
            + SH_C2[1] * yz * c[:, 5]
            + SH_C2[2] * (2.0 * zz - xx - yy) * c[:, 6]
            + SH_C2[3] * xz * c[:, 7]
            + SH_C2[4] * (xx - yy) * c[:, 8]
        )
    if k > 9:
        out = (
            out
            + SH_C3[0] * y * (3.0 * xx - yy) * c[:, 9]
            + SH_C3[1] * xy * z * c[:, 10]
            + SH_C3[2] * y * (4.0 * zz - xx - yy) * c[:, 11]
            + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * c[:, 12]
            + SH_C3[4] * x * (4.0 * zz - xx - yy) * c[:, 13]
            + SH_C3[5] * z * (xx - yy) * c[:, 14]
            + SH_C3[6] * x * (xx - 3.0 * yy) * c[:, 15]
        )
    return torch.clamp_min(out + 0.5, 0.0)


def _check_finite(name: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t.detach())
    if bad.any():
        rows = bad.reshape(t.shape[0], -1).any(dim=1)
        raise ValueError(
            f"Gaussians.{name} has NaN/inf values in {int(rows.sum())} of {t.shape[0]} Gaussians "
            f"(first at index {int(rows.nonzero()[0, 0])}); drop or fix those Gaussians before rendering"
        )


@dataclass
class Gaussians:
    """N 3D Gaussians in world space (cm, y up, the head model's face looking along +z).

    Construction checks shapes and values and raises ValueError on: mismatched lengths or shapes,
    NaN/inf anywhere, negative scales (pass linear scales, e.g. ``exp(log_scales)``), opacities outside
    [0, 1] (pass probabilities, e.g. ``sigmoid(logits)``) and all-zero quaternions. Defined results:
    quaternions are normalised; zero scales are allowed (flat or point Gaussians, drawn with the 0.3 px
    screen-space low-pass like any other); zero Gaussians is an empty scene. Floating tensors are stored
    as float32.
    """

    means: Tensor  # [N, 3] centres, cm
    """Centres in world space, cm."""
    quats: Tensor  # [N, 4] wxyz
    """Rotations as quaternions (w, x, y, z); normalised on construction (need not be unit on input)."""
    scales: Tensor  # [N, 3]
    """Standard deviations along the rotated axes, cm, linear (not log), >= 0."""
    opacities: Tensor  # [N]
    """Peak opacities in [0, 1] (not logits)."""
    colors: Tensor  # [N, 3] or [N, K, 3]
    """RGB in [0, 1] ([N, 3], view independent) or SH coefficients [N, K, 3], K in {1, 4, 9, 16}."""

    def __post_init__(self) -> None:
        fields = ("means", "quats", "scales", "opacities", "colors")
        for name in fields:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise ValueError(f"Gaussians.{name} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                value = value.float()
            elif value.dtype != torch.float32:
                value = value.to(torch.float32)
            setattr(self, name, value)
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape or n < 0:
                got = {f: tuple(getattr(self, f).shape) for f in fields}
                raise ValueError(
                    f"Gaussians.{name} must have shape {shape if n >= 0 else '[N, 3]'}; shapes given: {got}"
                )
        c = self.colors
        if not ((c.ndim == 2 and c.shape == (n, 3)) or (c.ndim == 3 and c.shape[0] == n and c.shape[2] == 3)):
            raise ValueError(
                f"Gaussians.colors must be [N, 3] RGB or [N, K, 3] SH with N={n}, got {tuple(c.shape)}"
            )
        if c.ndim == 3 and c.shape[1] not in SH_SIZES:
            raise ValueError(
                f"Gaussians.colors SH must have K in {SH_SIZES} (degree 0..3), got K={c.shape[1]}"
            )
        devices = {getattr(self, f).device for f in fields}
        if len(devices) > 1:
            raise ValueError(f"Gaussians tensors are on different devices: {sorted(map(str, devices))}")
        for name in fields:
            _check_finite(name, getattr(self, name))
        if (self.scales < 0).any():
            raise ValueError(
                "Gaussians.scales must be >= 0 (linear standard deviations in cm); "
                "if you have log scales, pass scales.exp()"
            )
        if ((self.opacities < 0) | (self.opacities > 1)).any():
            raise ValueError(
                "Gaussians.opacities must lie in [0, 1]; if you have logits, pass opacities.sigmoid()"
            )
        norms = self.quats.detach().norm(dim=-1)
        if (norms == 0).any():
            raise ValueError(
                "Gaussians.quats has all-zero quaternions, which are no rotation; use (1, 0, 0, 0)"
            )
        # Rows already unit length to float32 precision stay bit-identical, so normalising is idempotent
        # (a .ply round trip returns the very same quaternions).
        norm = self.quats.norm(dim=-1, keepdim=True)
        self.quats = torch.where((norm - 1).abs() < 1e-6, self.quats, self.quats / norm)

    @classmethod
    def unchecked(
        cls, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor
    ) -> Gaussians:
        """Wrap float32 tensors without the checks (unit quaternions expected).

        For per-frame updates of Gaussians that code built and checked once (an avatar posing the same
        set every frame), where the full validation would cost more than posing them.
        """
        self = cls.__new__(cls)
        self.means, self.quats, self.scales, self.opacities, self.colors = (
            means,
            quats,
            scales,
            opacities,
            colors,
        )
        return self

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def sh_degree(self) -> int | None:
        """SH degree (0..3) of the colours, or None for RGB colours."""
        return None if self.colors.ndim == 2 else SH_SIZES.index(self.colors.shape[1])

    def to(self, device: torch.device | str) -> Gaussians:
        """The same Gaussians on another device."""
        return Gaussians(*(t.to(device) for t in self._tensors()))

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Gaussians:
        """A subset: an int, a slice, an index tensor/list or a boolean mask [N]."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Gaussians(*(t[index] for t in self._tensors()))

    def colors_as_sh(self, k: int = 1) -> Tensor:  # [N, k, 3]
        """Colours as SH coefficients with k per channel (RGB becomes DC; higher bands zero-padded)."""
        sh = rgb_to_sh_dc(self.colors)[:, None, :] if self.colors.ndim == 2 else self.colors
        if sh.shape[1] > k:
            raise ValueError(f"cannot lower SH from K={sh.shape[1]} to K={k} without losing colour")
        return torch.nn.functional.pad(sh, (0, 0, 0, k - sh.shape[1]))

    @staticmethod
    def cat(parts: Sequence[Gaussians]) -> Gaussians:
        """Concatenate Gaussian sets; mixed colour kinds become SH of the highest degree present."""
        if not parts:
            raise ValueError("Gaussians.cat needs at least one Gaussians")
        kinds = {p.colors.shape[1:] for p in parts}
        if len(kinds) == 1:
            colors = torch.cat([p.colors for p in parts])
        else:
            k = max(p.colors.shape[1] if p.colors.ndim == 3 else 1 for p in parts)
            colors = torch.cat([p.colors_as_sh(k) for p in parts])
        return Gaussians(
            torch.cat([p.means for p in parts]),
            torch.cat([p.quats for p in parts]),
            torch.cat([p.scales for p in parts]),
            torch.cat([p.opacities for p in parts]),
            colors,
        )

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.means, self.quats, self.scales, self.opacities, self.colors


def quat_to_rotmat(quats: Tensor) -> Tensor:  # [N, 4] wxyz unit -> [N, 3, 3]
    """Rotation matrices of unit quaternions (w, x, y, z)."""
    w, x, y, z = quats.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))
