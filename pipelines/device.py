"""The one device resolver: what `--device auto|cpu|cuda[:N]` means on this machine, for every pipeline."""

from __future__ import annotations

import importlib.util

from models.errors import HeadsplatError

DEVICES = ("auto", "cpu", "cuda")


def gsplat_installed() -> bool:
    """Whether gsplat can be imported (it compiles its CUDA kernels on first use, not on import)."""
    return importlib.util.find_spec("gsplat") is not None


def cuda_count() -> int:
    """How many CUDA GPUs this process sees (reads the driver; does not start CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(name: str, rendering: bool = False) -> str:
    """'cpu' or 'cuda[:N]' for a --device value.

    auto: CUDA when a GPU is visible (and, when `rendering`, gsplat is installed to draw on it), else the
    CPU. An explicit cuda without a GPU, or without gsplat when rendering, is the user's error.
    """
    name = (name or "auto").strip().lower()
    if name not in DEVICES and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise HeadsplatError(f"--device must be auto, cpu or cuda (or cuda:N); got {name!r}")
    if name == "cpu":
        return "cpu"
    gpus = cuda_count()
    if name == "auto":
        return "cuda" if gpus and (gsplat_installed() or not rendering) else "cpu"
    if not gpus:
        raise HeadsplatError(f"--device {name} was asked for but no CUDA GPU is available: use cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= gpus:
        raise HeadsplatError(f"--device {name} was asked for but only {gpus} CUDA GPU(s) are visible")
    if rendering and not gsplat_installed():
        raise HeadsplatError(f'--device {name} renders with gsplat: pip install "headsplat[cuda]"')
    return name
