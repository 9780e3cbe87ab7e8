"""Gaussian file formats: the INRIA 3DGS .ply (encode, read) and the antimatter15 .splat web format (encode).
Files are written by `pipelines.splat_io`, through the project's one atomic writer.

Own numpy reader/writer rather than `plyfile`: plyfile is GPL-3.0 (this project is Apache-2.0), and the
3DGS layout is one fixed-size binary element that a numpy structured dtype reads in one call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from .gaussians import SH_C0, SH_SIZES, Gaussians

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
# Opacities 0 and 1 would be logits -inf/+inf; they are written as +-30 instead so every viewer reads a
# finite number (sigmoid(30) rounds to 1.0 in float32; sigmoid(-30) ~ 1e-13 is far below the 1/255 cut).
_LOGIT_LIMIT = 30.0
# Zero scales (flat or point Gaussians) are written as log(1e-30) for the same reason.
_MIN_SCALE = 1e-30


def encode_ply(gaussians: Gaussians) -> bytes:
    """The bytes of an INRIA 3DGS .ply (binary little endian float32; RGB colours become SH DC).

    Written to disk by `pipelines.splat_io.write_ply` (atomically, like every headsplat output)."""
    g = gaussians.to("cpu")
    n = len(g)
    sh = g.colors_as_sh(1 if g.colors.ndim == 2 else g.colors.shape[1]).double().numpy()  # [N, K, 3]
    k = sh.shape[1]
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major: all R, then G, then B
    op = g.opacities.double().numpy()
    with np.errstate(divide="ignore"):
        logits = np.clip(np.log(op) - np.log1p(-op), -_LOGIT_LIMIT, _LOGIT_LIMIT)
    columns = [
        ("x", g.means[:, 0].numpy()), ("y", g.means[:, 1].numpy()), ("z", g.means[:, 2].numpy()),
        ("nx", np.zeros(n)), ("ny", np.zeros(n)), ("nz", np.zeros(n)),
        *((f"f_dc_{c}", sh[:, 0, c]) for c in range(3)),
        *((f"f_rest_{j}", rest[:, j]) for j in range(rest.shape[1])),
        ("opacity", logits),
        *((f"scale_{j}", np.log(np.maximum(g.scales[:, j].double().numpy(), _MIN_SCALE))) for j in range(3)),
        *((f"rot_{j}", g.quats[:, j].numpy()) for j in range(4)),
    ]  # fmt: skip
    table = np.empty(n, dtype=[(name, "<f4") for name, _ in columns])
    for name, values in columns:
        table[name] = values
    header = "".join(
        ["ply\n", "format binary_little_endian 1.0\n", f"element vertex {n}\n"]
        + [f"property float {name}\n" for name, _ in columns]
        + ["end_header\n"]
    )
    return header.encode("ascii") + table.tobytes()


def read_ply(path: str | os.PathLike) -> Gaussians:
    """Read an INRIA 3DGS .ply (ours, gsplat's, SuperSplat's uncompressed one) into Gaussians (SH colours)."""
    path = Path(path)
    with open(path, "rb") as f:
        blob = f.read()
    end = blob.find(b"end_header")
    if not blob.startswith(b"ply") or end < 0:
        raise ValueError(f"{path} is not a .ply file (no 'ply' magic or no end_header)")
    body_start = blob.index(b"\n", end) + 1
    lines = blob[:end].decode("ascii", errors="replace").splitlines()
    fmt = next((ln.split()[1] for ln in lines if ln.startswith("format")), "")
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: only binary .ply files are supported, this one is {fmt or 'unknown'}")
    order = "<" if fmt == "binary_little_endian" else ">"
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for ln in lines:
        parts = ln.split()
        if parts[:1] == ["element"]:
            elements.append((parts[1], int(parts[2]), []))
        elif parts[:1] == ["property"]:
            if not elements:
                raise ValueError(f"{path}: property before any element in the header")
            if parts[1] == "list":
                elements[-1][2].append(("list", parts[-1]))
            elif parts[1] in _PLY_TYPES:
                elements[-1][2].append((parts[2], order + _PLY_TYPES[parts[1]]))
            else:
                raise ValueError(f"{path}: unknown property type {parts[1]!r}")
    offset = body_start
    for name, count, props in elements:
        if any(kind == "list" for kind, _ in props):
            raise ValueError(f"{path}: element {name!r} has list properties, which a 3DGS .ply never has")
        dtype = np.dtype(props)
        if name == "vertex":
            if offset + dtype.itemsize * count > len(blob):
                raise ValueError(f"{path} is truncated: its header promises {count} vertices")
            table = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
            break
        offset += dtype.itemsize * count
    else:
        raise ValueError(f"{path}: no 'vertex' element")
    return _gaussians_from_table(table, path)


def _gaussians_from_table(table: np.ndarray, path: Path) -> Gaussians:
    names = set(table.dtype.names)
    if "packed_position" in names:
        raise ValueError(f"{path} is a compressed SuperSplat .ply; export it uncompressed to read it here")
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    needed += [f"scale_{j}" for j in range(3)] + [f"rot_{j}" for j in range(4)]
    missing = [p for p in needed if p not in names]
    if missing:
        raise ValueError(f"{path} is not a 3DGS .ply: missing properties {missing}")
    n_rest = sum(1 for p in names if re.fullmatch(r"f_rest_\d+", p))
    if (
        n_rest % 3
        or n_rest // 3 + 1 not in SH_SIZES
        or any(f"f_rest_{j}" not in names for j in range(n_rest))
    ):
        raise ValueError(f"{path}: {n_rest} f_rest properties do not form SH of degree 0..3 (3, 9, 24 or 45)")
    k = n_rest // 3 + 1

    def cols(*props: str) -> np.ndarray:
        out = np.empty((len(table), len(props)), np.float64)
        for j, p in enumerate(props):
            out[:, j] = table[p]
        return out

    n = len(table)
    dc = cols("f_dc_0", "f_dc_1", "f_dc_2")
    # A DC-only file (degree 0, e.g. our own RGB export) has no f_rest columns at all.
    rest_cols = cols(*(f"f_rest_{j}" for j in range(n_rest))) if n_rest else np.zeros((n, 0))
    rest = rest_cols.reshape(n, 3, k - 1).transpose(0, 2, 1)
    with np.errstate(over="ignore"):
        opacities = 1.0 / (1.0 + np.exp(-cols("opacity")[:, 0]))
        scales = np.exp(cols("scale_0", "scale_1", "scale_2"))
    try:
        return Gaussians(
            means=torch.from_numpy(cols("x", "y", "z")).float(),
            quats=torch.from_numpy(cols("rot_0", "rot_1", "rot_2", "rot_3")).float(),
            scales=torch.from_numpy(scales).float(),
            opacities=torch.from_numpy(opacities).float(),
            colors=torch.from_numpy(np.concatenate([dc[:, None, :], rest], axis=1)).float(),
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def encode_splat(gaussians: Gaussians) -> bytes:
    """The bytes of the 32-byte-per-splat .splat of antimatter15's web viewer (view-independent colour).

    Per splat: position xyz float32, scale xyz float32 (linear), RGBA uint8 (colour from SH DC, alpha =
    opacity), rotation wxyz uint8 as q * 128 + 128. Splats are ordered by size x opacity, largest first,
    as the viewer's own converter does, so progressive loading shows the big ones first.
    """
    g = gaussians.to("cpu")
    rgb = g.colors if g.colors.ndim == 2 else SH_C0 * g.colors[:, 0, :] + 0.5
    importance = g.scales.double().prod(dim=1) * g.opacities.double()
    order = torch.sort(-importance, stable=True).indices
    table = np.empty(
        len(g), dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)]
    )
    table["pos"] = g.means[order].numpy()
    table["scale"] = g.scales[order].numpy()
    rgba = torch.cat([rgb[order], g.opacities[order, None]], dim=1)
    table["rgba"] = torch.round(rgba * 255).clamp(0, 255).to(torch.uint8).numpy()
    table["rot"] = torch.round(g.quats[order] * 128 + 128).clamp(0, 255).to(torch.uint8).numpy()
    return table.tobytes()
