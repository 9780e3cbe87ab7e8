"""How much Talk's default motion moves the head (issue #16); prints one JSON line per clip and generator.

    PYTHONPATH=. python benchmarks/head_motion.py [--seeds 5]

Clips: the shipped speech (flite, 6.7 s) and 18 s of real recorded speech, the four speech samples that
ship inside the installed gradio package (`gradio/media_assets/audio/`: cate_blanch.mp3,
cate_blanch_2.mp3, heath_ledger.mp3, recording1.wav, read from there and joined). Generators: the shipped
motion model (Talk's default, steps 3) and the rule-based teacher (steps 0), each with seeds 0 to
`--seeds` - 1. Printed per clip and generator: the standard deviation of pitch, yaw and roll (degrees)
for seed 0 (Talk's default) and their mean and least over the seeds, and the largest |yaw|. Real
speakers: yaw std 3-4°, pitch 2-3° (the issue's goal for the default: yaw ≥ 3°, pitch ≥ 2°).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pipelines.audio_io import load_audio
from pipelines.drivers import speech_motion
from pipelines.talk import DEFAULT_AUDIO, TalkConfig

AXES = ("pitch", "yaw", "roll")
REAL_SPEECH = ("cate_blanch.mp3", "cate_blanch_2.mp3", "heath_ledger.mp3", "recording1.wav")


def per_axis(values: np.ndarray) -> dict:
    return {axis: round(float(v), 2) for axis, v in zip(AXES, values)}


def clips() -> list[tuple[str, np.ndarray]]:
    found = [("shipped", load_audio(DEFAULT_AUDIO))]
    try:
        import gradio

        folder = Path(gradio.__file__).parent / "media_assets" / "audio"
        found.append(("real", np.concatenate([load_audio(folder / name) for name in REAL_SPEECH])))
    except (ImportError, OSError) as err:
        print(f"skipping the real speech: {err}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    args = parser.parse_args()
    for name, samples in clips():
        for steps, generator in ((3, "model"), (0, "teacher")):
            stds, peak = [], 0.0
            for seed in range(args.seeds):
                rotation = np.degrees(speech_motion(samples, TalkConfig(steps=steps, seed=seed)).rotation)
                stds.append(rotation.std(0))
                peak = max(peak, float(np.abs(rotation[:, 1]).max()))
            stds = np.array(stds)
            record = {
                "clip": name,
                "seconds": round(len(samples) / 16000, 1),
                "generator": generator,
                "seed0_std_deg": per_axis(stds[0]),
                "mean_std_deg": per_axis(stds.mean(0)),
                "least_std_deg": per_axis(stds.min(0)),
                "peak_abs_yaw_deg": round(peak, 1),
            }
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
