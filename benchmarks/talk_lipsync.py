"""Talk's lip sync measured on its own output video by the face tracker; prints one JSON line.

    PYTHONPATH=. python benchmarks/talk_lipsync.py [--size 512] [--moving] [--live]

Talk runs on the shipped portrait and speech with the head held still (`--still`), so every frame is a
head-still frame; with `--moving`, with Talk's default head motion instead (jitter then includes the head's
own motion above 5 frames' average, and the fixed crop sees a moving face). MediaPipe landmarks are then tracked in the mp4 (one fixed face crop for all frames, so
the tracker's own crop-to-crop wobble is not counted):

- lip_correlation: Pearson's r between the tracked lip gap (inner-lip landmarks 13/14 over the eye
  distance) and the driving motion's mouth opening (`models.visemes.mouth_opening`).
- pbm_closed_share: share of the speech's p/b/m phones (exact timings from flite, which made the shipped
  sample) during which (±1 frame) the tracked gap falls into the lowest quarter of its range.
- jitter_px: RMS distance of eye corners, nose tip and bridge from their 5-frame moving average, in
  pixels of the video (slow drift is not jitter).

With `--live`, the same speech is also replayed in real time through a live session (`pipelines.live`, its
default 256² crop, 20 ms blocks, the same still or moving head) and its output measured the same way
against the motion that drove it: the JSON then has a `live` entry beside the offline numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from models.visemes import mouth_opening
from pipelines.audio_io import load_audio
from pipelines.motion_io import load_motion
from pipelines.talk import DEFAULT_AUDIO, TalkConfig, talk

#: The shipped speech sample's text (assets/defaults/README.md).
TEXT = (
    "Hello! I am a talking head made of Gaussian splats. Give me a photo and some speech, "
    "and I will say it back to you."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="Talk's render size")
    parser.add_argument("--moving", action="store_true", help="Talk's default head motion, not a still head")
    parser.add_argument("--live", action="store_true", help="also measure a live session's output")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out, saved = Path(tmp) / "talk.mp4", Path(tmp) / "motion.npz"
        talk(
            TalkConfig(
                output=str(out), size=args.size, still=not args.moving, save_motion=str(saved), progress=False
            )
        )
        result = {
            "benchmark": "talk_lipsync",
            "size": args.size,
            "head": "moving" if args.moving else "still",
        }
        result |= measure(out, load_motion(saved))
        if args.live:
            from pipelines.live import LiveCommand, replay

            live_out, live_saved = Path(tmp) / "live.mp4", Path(tmp) / "live_motion.npz"
            cmd = LiveCommand(
                audio=str(DEFAULT_AUDIO), output=str(live_out), save_motion=str(live_saved), realtime=True,
                still=not args.moving, quiet=True, cache_dir="",
            )  # fmt: skip
            summary = replay(cmd)
            live = {
                "size": cmd.size,
                "dropped_late": summary["dropped_late"],
                "latency_ms": summary["latency_ms"],
            }
            result["live"] = live | measure(live_out, load_motion(live_saved))
            result["live_minus_offline_r"] = round(
                result["live"]["lip_correlation"] - result["lip_correlation"], 3
            )
    print(json.dumps(result))


def measure(video: Path, motion) -> dict:
    """Lip gap vs driving mouth opening, p/b/m closures and jitter of one video (see the module doc)."""
    from pipelines.track import landmark_jitter, lip_gap_and_anchors
    from pipelines.tts import flite_speak

    gap, points = lip_gap_and_anchors(video)
    n = min(len(gap), motion.num_frames)
    gap, driven = gap[:n], mouth_opening(motion.expression)[:n]

    speech, phones = flite_speak(TEXT, "slt")
    shipped = load_audio(DEFAULT_AUDIO)
    same_audio = abs(speech.size - shipped.size) <= 0.01 * shipped.size
    low = gap.min() + 0.25 * np.ptp(gap)
    closed = total = 0
    for ph in phones if same_audio else []:
        if ph.label in ("P", "B", "M"):
            lo, hi = max(0, math.floor(ph.start * motion.fps) - 1), min(n, math.ceil(ph.end * motion.fps) + 2)
            total += 1
            closed += int(gap[lo:hi].min() <= low)
    return {
        "frames": int(n),
        "lip_correlation": round(float(np.corrcoef(gap, driven)[0, 1]), 3),
        "pbm_closed_share": round(closed / total, 3) if total else None,
        "pbm_phones": total,
        "jitter_px": round(landmark_jitter(points[:n]), 3),
        "phones_match_shipped_audio": bool(same_audio),
    }


if __name__ == "__main__":
    main()
