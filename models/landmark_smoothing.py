"""Temporal smoothing of landmark tracks: the One Euro filter, applied in inter-ocular units."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.errors import HeadsplatError
from models.landmark_correspondence import LANDMARK_SCHEMES


@dataclass
class OneEuroFilter:
    """One Euro filter (Casiez, Roussel, Vogel, CHI 2012): low-pass whose cutoff rises with speed.

    Still signals are smoothed hard (jitter gone), fast ones pass with little lag. Values are filtered
    element-wise; `min_cutoff` and `d_cutoff` are in Hz, `beta` in Hz per (unit/s) of the signal.
    """

    min_cutoff: float = 1.0
    beta: float = 5.0
    d_cutoff: float = 4.0
    _value: np.ndarray | None = None
    _speed: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._value, self._speed = None, None

    def __call__(self, value: np.ndarray, dt: float) -> np.ndarray:
        """Filtered value (same shape as `value`); `dt` is the time since the previous sample, seconds."""
        value = np.asarray(value, np.float64)
        if self._value is None or self._value.shape != value.shape:
            self._value, self._speed = value.copy(), np.zeros_like(value)
            return value.copy()
        speed = (value - self._value) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._speed = a_d * speed + (1 - a_d) * self._speed
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed)
        a = self._alpha(cutoff, dt)
        self._value = a * value + (1 - a) * self._value
        return self._value.copy()


def smooth_landmarks(
    sequence: np.ndarray,  # [T, N, 2|3] pixels, N = 468 (MediaPipe), 470 (+ iris centres) or 68 (iBUG)
    fps: float,
    min_cutoff: float = 1.0,
    beta: float = 5.0,
    zero_phase: bool = True,
) -> np.ndarray:
    """One Euro smoothing of a landmark track in inter-ocular units (so settings fit any face size).

    With `zero_phase`, the filter runs forwards and backwards and the two are averaged, which cancels
    its lag (offline use); otherwise it is causal (streaming).
    """
    seq = np.asarray(sequence, np.float64)
    schemes = {n: eyes for n, eyes, _, _ in LANDMARK_SCHEMES.values()}
    schemes[470] = schemes[468]  # MediaPipe mesh + 2 iris centres
    if seq.ndim != 3 or seq.shape[1] not in schemes or seq.shape[2] not in (2, 3):
        raise HeadsplatError(f"landmark sequence must be [T, 468|470|68, 2|3]; got {list(seq.shape)}")
    if len(seq) < 2:
        return seq.copy()
    right, left = schemes[seq.shape[1]]
    iod = np.linalg.norm(seq[:, right, :2] - seq[:, left, :2], axis=1)
    unit = float(np.median(iod))
    dt = 1.0 / fps

    def run(order) -> np.ndarray:
        filt = OneEuroFilter(min_cutoff, beta)
        out = np.empty_like(seq)
        for t in order:
            out[t] = filt(seq[t] / unit, dt) * unit
        return out

    forward = run(range(len(seq)))
    if not zero_phase:
        return forward
    return 0.5 * (forward + run(range(len(seq) - 1, -1, -1)))
