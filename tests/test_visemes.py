"""The coarticulation teacher: mouth shapes per phone, coarticulation, blinks, head motion, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from models.audio import Phone
from models.errors import HeadsplatError
from models.visemes import (
    LIPS_CLOSED_BELOW,
    bilabial_closure,
    blink_curve,
    mouth_opening,
    teacher_motion,
    viseme_curves,
)

FPS = 25.0


def _phones(spec: str, start: float = 0.2, step: float = 0.1) -> list[Phone]:
    """'SIL M AA P AA' → phones of `step` seconds each (SIL padded at both ends)."""
    labels = ["SIL", *spec.split(), "SIL"]
    out, t = [], 0.0
    for i, label in enumerate(labels):
        dur = start if i in (0, len(labels) - 1) else step
        out.append(Phone(label, t, t + dur))
        t += dur
    return out


def _frames(phones: list[Phone]) -> int:
    return int(np.ceil(phones[-1].end * FPS))


def _value_at(curve: np.ndarray, t: float) -> float:
    return float(curve[int(round(t * FPS))])


def test_bilabials_close_the_lips_and_open_vowels_open_the_jaw():
    phones = _phones("AA P AA B AA M AA", step=0.12)
    expr = viseme_curves(phones, _frames(phones), FPS)
    opening = mouth_opening(expr)
    for p in phones:
        mid = 0.5 * (p.start + p.end)
        if p.label in ("P", "B", "M"):
            assert _value_at(opening, mid) < LIPS_CLOSED_BELOW, p
        elif p.label == "AA":
            assert _value_at(opening, mid) > 0.3, p
    assert bilabial_closure(phones, expr, FPS) == (3, 3)


def test_short_bilabial_between_vowels_still_closes():
    # A 30 ms /b/ falls between 25 fps frame times; the teacher widens it so a frame sees the closure.
    phones = [Phone("AA", 0.0, 0.21), Phone("B", 0.21, 0.24), Phone("AA", 0.24, 0.5)]
    expr = viseme_curves(phones, 13, FPS)
    assert bilabial_closure(phones, expr, FPS) == (1, 1)


def test_rounding_and_spreading_and_lip_tuck():
    idx = {
        n: i
        for i, n in enumerate(__import__("models.latent", fromlist=["EXPRESSION_NAMES"]).EXPRESSION_NAMES)
    }
    phones = _phones("UW IY F", step=0.2)
    expr = viseme_curves(phones, _frames(phones), FPS)
    uw, iy, f = (0.5 * (p.start + p.end) for p in phones[1:4])
    assert _value_at(expr[:, idx["mouthPucker"]], uw) > 0.4
    assert _value_at(expr[:, idx["mouthPucker"]], iy) < 0.15
    assert _value_at(expr[:, idx["mouthStretch_L"]], iy) > 0.25
    assert _value_at(expr[:, idx["mouthRollLower"]], f) > 0.35


def test_coarticulation_carries_rounding_through_neutral_consonants():
    idx = {
        n: i
        for i, n in enumerate(__import__("models.latent", fromlist=["EXPRESSION_NAMES"]).EXPRESSION_NAMES)
    }
    # In "uw k uw" the lips stay rounded through /k/ (it does not constrain the lips) ...
    rounded = _phones("UW K UW", step=0.12)
    k_mid = 0.5 * (rounded[2].start + rounded[2].end)
    pucker = viseme_curves(rounded, _frames(rounded), FPS)[:, idx["mouthPucker"]]
    # ... but not in "iy k iy".
    spread = _phones("IY K IY", step=0.12)
    pucker_spread = viseme_curves(spread, _frames(spread), FPS)[:, idx["mouthPucker"]]
    assert _value_at(pucker, k_mid) > 0.4
    assert _value_at(pucker_spread, k_mid) < 0.05


def test_mouth_curves_are_smooth():
    phones = _phones("HH EH L OW W ER L D AH N D M UW N", step=0.08)
    expr = viseme_curves(phones, _frames(phones), FPS)
    jump = np.abs(np.diff(mouth_opening(expr))).max()
    # A frame-to-frame step of the lip gap stays well below the full open-close range (~0.5).
    assert jump < 0.3
    assert np.all((expr >= 0) & (expr <= 1))


def test_silence_gives_closed_mouth_with_blinks_and_breathing():
    motion = teacher_motion([], 250, FPS, seed=3)
    assert mouth_opening(motion.expression).max() < 1e-6
    assert motion["eyeBlink_L"].max() > 0.8  # ten seconds without a blink would look dead
    assert np.ptp(motion.rotation[:, 0]) > np.radians(0.3)  # the head is never frozen


def test_blinks_are_seeded_and_follow_the_rate():
    rng = np.random.default_rng
    a = blink_curve(1500, FPS, rng(1), per_minute=17)
    b = blink_curve(1500, FPS, rng(1), per_minute=17)
    c = blink_curve(1500, FPS, rng(2), per_minute=17)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    def count(curve):
        closed = curve > 0.5
        return int(np.sum(closed[1:] & ~closed[:-1]))

    # One minute at 17/min: roughly 10-25 blinks; a 3x rate gives clearly more.
    assert 10 <= count(a) <= 25
    assert count(blink_curve(1500, FPS, rng(1), per_minute=51)) > 2 * count(a)
    # A blink lasts ~260 ms: a handful of frames, not one and not dozens.
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, (a > 0.05).astype(int), 0])))[::2]
    assert 3 <= np.median(runs) <= 10


def test_seed_changes_head_and_blinks_but_not_lips():
    phones = _phones("B AA P AA M AA W IY S IY", step=0.15)
    n = _frames(phones)
    m1 = teacher_motion(phones, n, FPS, seed=1)
    m2 = teacher_motion(phones, n, FPS, seed=2)
    np.testing.assert_allclose(mouth_opening(m1.expression), mouth_opening(m2.expression))
    assert np.abs(m1.rotation - m2.rotation).max() > np.radians(0.5)
    np.testing.assert_array_equal(m1.expression, teacher_motion(phones, n, FPS, seed=1).expression)


def test_emphasis_nods_the_head():
    phones = _phones("AA " * 12, step=0.25)
    n = _frames(phones)
    energy = np.full(n, -10.0, np.float32)
    loud_time = 0.5 * (phones[6].start + phones[6].end)
    energy[int((loud_time - 0.1) * FPS) : int((loud_time + 0.1) * FPS)] = 0.0  # one loud syllable
    nods = [teacher_motion(phones, n, FPS, energy_db=energy, seed=s).rotation[:, 0] for s in range(4)]
    quiet = [teacher_motion(phones, n, FPS, seed=s).rotation[:, 0] for s in range(4)]
    i = int(loud_time * FPS)
    # Averaged over seeds, the head dips (positive pitch) at the emphasised syllable.
    assert np.mean([m[i] - q[i] for m, q in zip(nods, quiet)]) > np.radians(0.8)


def test_emotion_and_errors():
    phones = _phones("AA")
    n = _frames(phones)
    happy = teacher_motion(phones, n, FPS, emotion="happy")
    assert happy["mouthSmile_L"].mean() > 0.3
    with pytest.raises(HeadsplatError, match="unknown emotion"):
        teacher_motion(phones, n, FPS, emotion="bored")
    with pytest.raises(HeadsplatError, match="unknown phone"):
        viseme_curves([Phone("XX", 0, 0.1)], 3, FPS)
    with pytest.raises(HeadsplatError, match="one value per frame"):
        teacher_motion(phones, n, FPS, energy_db=np.zeros(n + 1))
