"""An avatar's state (the tensors and metadata its `state()` returns), and the checks `from_state` makes.

Both avatar kinds store their arrays by name with a "binding.<field>" entry per MeshBinding field, and
JSON metadata naming their kind, the head model's identity size, the crop and a camera. A damaged or
crafted state raises HeadsplatError naming the first field that is wrong (pipelines.avatar_io reads
and writes the files; these are the rules they must follow).
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.errors import HeadsplatError
from models.head_model import HeadModel
from models.mesh_binding import MeshBinding
from renderers import Camera


def state_tensors(avatar, names: tuple[str, ...], binding: MeshBinding) -> dict[str, Tensor]:
    """The avatar's tensors `names` and the binding's fields ("binding.<field>"): detached, CPU, contiguous."""
    tensors = {name: getattr(avatar, name) for name in names}
    tensors.update({f"binding.{f}": getattr(binding, f) for f in MeshBinding.FIELDS})
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}


def state_meta(kind: str, head: HeadModel, camera_key: str, camera: Camera, **fields) -> dict:
    """JSON-ready metadata: the kind, format version and identity size, `fields`, then the camera."""
    intrinsics = {name: getattr(camera, name) for name in ("fx", "fy", "cx", "cy", "width", "height")}
    return {
        "kind": kind,
        "version": 1,
        "num_identity": head.num_identity,
        **fields,
        camera_key: {
            **intrinsics,
            "world_to_camera": camera.world_to_camera.tolist(),
            "near": camera.near,
            "far": camera.far,
        },
    }


def binding_layout(count: str) -> tuple:
    """The `avatar_arrays` layout rows of a MeshBinding of `count` Gaussians, as `state_tensors` stores it."""
    return (
        ("binding.triangle", "index", (count,), "T"),
        ("binding.barycentric", "float", (count, 3), "barycentric"),
        ("binding.offset", "float", (count,), None),
        ("binding.rotation", "float", (count, 4), "quat"),
        ("binding.scale", "float", (count, 3), "scale"),
    )


def check_kind(meta: dict, kind: str, refusal: str) -> None:
    """A HeadsplatError saying `refusal` unless the metadata is a dict of this kind."""
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise HeadsplatError(refusal)


def binding_from_arrays(arrays: dict[str, Tensor]) -> MeshBinding:
    """The binding stored in `avatar_arrays`' output (its "binding.<field>" entries are taken out)."""
    return MeshBinding(*(arrays.pop(f"binding.{f}") for f in MeshBinding.FIELDS))


#: Most Gaussians an avatar may hold (rows of any per-Gaussian array in its file).
MAX_AVATAR_GAUSSIANS = 20_000_000
#: Largest camera side (and background side) an avatar may have, pixels.
MAX_AVATAR_IMAGE_SIDE = 4096
#: Largest magnitude of any stored number without a tighter range (cm, radians, triangle sizes, photo
#: pixels): far beyond any real head or photo, small enough that posing and projecting stay finite.
MAX_AVATAR_VALUE = 1e5
#: Largest barycentric weight of a stored binding.
MAX_BARYCENTRIC = 1000.0
#: Value ranges of `FILE_LAYOUT` rows: (low, high, how the message says it). "unit" allows float noise.
_AVATAR_RANGES = {
    None: (-MAX_AVATAR_VALUE, MAX_AVATAR_VALUE, f"[-{MAX_AVATAR_VALUE:g}, {MAX_AVATAR_VALUE:g}]"),
    "unit": (-1e-4, 1.0 + 1e-4, "[0, 1]"),
    "scale": (0.0, MAX_AVATAR_VALUE, f"[0, {MAX_AVATAR_VALUE:g}]"),
    # Points bound off their triangle (the photo's teeth, ICT's lowered upper row) have barycentrics
    # outside [0, 1], a few triangle sizes away at most.
    "barycentric": (-MAX_BARYCENTRIC, MAX_BARYCENTRIC, f"[-{MAX_BARYCENTRIC:g}, {MAX_BARYCENTRIC:g}]"),
}


def avatar_damaged(what: str) -> HeadsplatError:
    """The error for a damaged avatar file, `what` naming the field (one line)."""
    return HeadsplatError(f"avatar file is damaged: {' '.join(what.split())}; rebuild it")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value, limit: float = MAX_AVATAR_VALUE) -> bool:
    """A finite JSON number (not a bool, not a string) of magnitude at most `limit`."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(abs(value) <= limit)


def avatar_camera(meta: dict, key: str) -> Camera:
    """The camera stored under `key` in an avatar's metadata, every field checked."""
    cam = meta.get(key)
    if cam is None:
        raise avatar_damaged(f"its metadata has no {key}")
    if not isinstance(cam, dict):
        raise avatar_damaged(f"{key} must be a JSON object, not {_short(cam)}")
    values = {}
    for name in ("fx", "fy", "cx", "cy", "near", "far"):
        if name not in cam and name in ("near", "far"):
            continue  # Camera's defaults
        value = cam.get(name)
        if not _is_number(value, 1e9) or (name in ("fx", "fy", "near", "far") and value <= 0):
            sign = "positive " if name in ("fx", "fy", "near", "far") else ""
            raise avatar_damaged(f"{key}.{name} must be a {sign}finite number, not {_short(value)}")
        values[name] = float(value)
    for name in ("width", "height"):
        value = cam.get(name)
        if not _is_int(value) or not 1 <= value <= MAX_AVATAR_IMAGE_SIDE:
            raise avatar_damaged(
                f"{key}.{name} must be a whole number of pixels from 1 to {MAX_AVATAR_IMAGE_SIDE}, not "
                f"{_short(value)}"
            )
        values[name] = value
    matrix = cam.get("world_to_camera")
    if not (
        isinstance(matrix, list)
        and len(matrix) == 4
        and all(isinstance(row, list) and len(row) == 4 and all(map(_is_number, row)) for row in matrix)
    ):
        raise avatar_damaged(f"{key}.world_to_camera must be 4 rows of 4 finite numbers")
    try:
        return Camera(world_to_camera=torch.tensor(matrix, dtype=torch.float32), **values)
    except ValueError as err:
        raise avatar_damaged(f"{key} is unusable ({err})") from err


def avatar_crop_box(meta: dict) -> tuple[float, float, float, float]:
    """The metadata's crop box (x0, y0, x1, y1) in photo pixels, checked."""
    box = meta.get("crop_box")
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        raise avatar_damaged(
            f"crop_box must be 4 finite numbers (x0, y0, x1, y1) within ±{MAX_AVATAR_VALUE:g} pixels, "
            f"not {_short(box)}"
        )
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise avatar_damaged(f"crop_box {_short(box)} is empty (it needs x1 > x0 and y1 > y0)")
    return x0, y0, x1, y1


def meta_count(meta: dict, key: str, default: int = 0) -> int:
    """The metadata's whole number >= 0 under `key` (`default` when absent), checked."""
    value = meta.get(key, default)
    if not _is_int(value) or value < 0:
        raise avatar_damaged(f"{key} must be a whole number >= 0, not {_short(value)}")
    return value


def meta_flag(meta: dict, key: str, default: bool = False) -> bool:
    """The metadata's true/false under `key` (`default` when absent), checked."""
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise avatar_damaged(f"{key} must be true or false, not {_short(value)}")
    return value


def meta_number(meta: dict, key: str, default: float = 0.0) -> float:
    """The metadata's finite number under `key` (`default` when absent), checked."""
    value = meta.get(key, default)
    if not _is_number(value):
        raise avatar_damaged(f"{key} must be a finite number, not {_short(value)}")
    return float(value)


def avatar_arrays(
    tensors: dict[str, Tensor], layout: tuple, head: HeadModel, sizes: dict[str, tuple[int, str]]
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Every array of `layout` from `tensors`, checked and converted: floats to float32, indices to int64.

    `layout` has one row per array: name, element kind ("float", or "index" into the head mesh's
    triangles), shape (numbers, or names of sizes that must agree wherever they appear, e.g. N
    Gaussians, K identity coefficients, V the head model's vertices, T its triangles) and range ("unit":
    [0, 1]; "scale": >= 0; "quat": no all-zero row; None: any sane number). `sizes` holds the sizes
    already known, each with what it comes from; returns the arrays by name and every size. Raises
    HeadsplatError on the first problem."""
    sizes = {
        "V": (head.num_vertices, "the head model's vertices"),
        "T": (len(head.triangles), f"the head mesh's {len(head.triangles)} triangles"),
        **sizes,
    }
    out = {}
    for name, kind, shape, bounds in layout:
        value = tensors.get(name)
        if value is None:
            raise avatar_damaged(f"it lacks {name}")
        if not isinstance(value, Tensor):
            raise avatar_damaged(f"{name} is not an array")
        # The element type first, before any conversion: an integer array is no colour, a float no index.
        dtype = str(value.dtype).removeprefix("torch.")
        if kind == "float" and not value.is_floating_point():
            raise avatar_damaged(f"{name} must hold floating-point numbers, not {dtype}")
        if kind == "index" and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
            raise avatar_damaged(f"{name} must hold integer indices, not {dtype}")
        got = tuple(value.shape)
        for dim, size in zip(shape, got) if len(got) == len(shape) else ():
            if isinstance(dim, str) and dim not in sizes:  # the first array with this size sets it
                if size > MAX_AVATAR_GAUSSIANS:
                    raise avatar_damaged(f"{name} has {size} rows, more than {MAX_AVATAR_GAUSSIANS}")
                sizes[dim] = (size, name)
        want = "[" + ", ".join(str(d if isinstance(d, int) else sizes.get(d, (d,))[0]) for d in shape) + "]"
        if len(got) != len(shape):
            raise avatar_damaged(f"{name} has shape {list(got)}, expected {want}")
        for dim, size in zip(shape, got):
            if size != (dim if isinstance(dim, int) else sizes[dim][0]):
                source = "" if isinstance(dim, int) else f" to match {sizes[dim][1]}"
                raise avatar_damaged(f"{name} has shape {list(got)}, expected {want}{source}")
        if kind == "index":
            value = value.to(torch.int64)
            count, source = sizes[bounds]
            if value.numel() and (int(value.min()) < 0 or int(value.max()) >= count):
                raise avatar_damaged(f"{name} has indices outside {source}")
        else:
            value = value.to(torch.float32)
            if not bool(torch.isfinite(value).all()):
                raise avatar_damaged(f"{name} has NaN or infinite values")
            lo, hi, said = _AVATAR_RANGES.get(bounds, _AVATAR_RANGES[None])
            if value.numel() and (float(value.min()) < lo or float(value.max()) > hi):
                raise avatar_damaged(f"{name} has values outside {said}")
            if bounds == "quat" and bool((value.norm(dim=-1) < 1e-6).any()):
                raise avatar_damaged(f"{name} has all-zero rotations")
        out[name] = value
    if "K" in sizes and sizes["K"][0] > head.num_identity:
        raise avatar_damaged(
            f"identity has {sizes['K'][0]} coefficients, more than the head model's {head.num_identity}"
        )
    return out, {k: v[0] for k, v in sizes.items()}
