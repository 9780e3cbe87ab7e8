"""The one device resolver."""

import pytest

import pipelines.device as device
from models.errors import HeadsplatError
from pipelines.device import resolve_device


@pytest.mark.parametrize(("gpus", "gsplat", "rendering", "expected"), [
    (0, True, True, "cpu"), (1, False, True, "cpu"), (1, True, True, "cuda"), (1, False, False, "cuda"),
])  # fmt: skip
def test_auto_picks_cuda_only_when_it_can_be_used(monkeypatch, gpus, gsplat, rendering, expected):
    monkeypatch.setattr(device, "cuda_count", lambda: gpus)
    monkeypatch.setattr(device, "gsplat_installed", lambda: gsplat)
    assert resolve_device("auto", rendering=rendering) == expected
    assert resolve_device("cpu", rendering=rendering) == "cpu"


def test_cuda_that_cannot_be_used_is_a_user_error(monkeypatch):
    monkeypatch.setattr(device, "cuda_count", lambda: 0)
    with pytest.raises(HeadsplatError, match="no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(device, "cuda_count", lambda: 2)
    monkeypatch.setattr(device, "gsplat_installed", lambda: False)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(HeadsplatError, match="only 2"):
        resolve_device("cuda:2")
    with pytest.raises(HeadsplatError, match="gsplat"):
        resolve_device("cuda", rendering=True)
    with pytest.raises(HeadsplatError, match="must be auto"):
        resolve_device("tpu")
