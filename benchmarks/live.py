"""Live latency: the shipped speech looped to --seconds, replayed in real time (20 ms blocks, as a
microphone delivers them) through `pipelines.live`; prints one JSON line.

    python benchmarks/live.py                      # 2 minutes, 256² crop
    python benchmarks/live.py --seconds 30 --size 320

Latency is per frame, from the arrival of the audio at the frame's start to the frame being ready (p50,
p95, max); a growing backlog shows as a last minute worse than the first. `sustained_fps` counts frames made
per second of wall time (25 when none is dropped).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
from pathlib import Path

import numpy as np

from pipelines.audio_io import load_audio, save_wav
from pipelines.live import LiveCommand, replay
from pipelines.talk import DEFAULT_AUDIO


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="speech length (the sample looped)")
    parser.add_argument("--size", type=int, default=256, help="live render size of the face crop")
    parser.add_argument("--chunk", type=int, default=2, help="motion frames per model step")
    parser.add_argument("--lookahead", type=int, default=2, help="frames of future audio")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    speech = load_audio(DEFAULT_AUDIO)
    looped = np.tile(speech, int(np.ceil(args.seconds * 16_000 / speech.size)))[: int(args.seconds * 16_000)]
    with tempfile.TemporaryDirectory() as tmp:
        wav = save_wav(looped, Path(tmp) / "speech.wav")
        cmd = LiveCommand(
            audio=str(wav), realtime=True, size=args.size, chunk=args.chunk, lookahead=args.lookahead,
            quiet=True, cache_dir="",
        )  # fmt: skip
        summary = replay(cmd)
    summary["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    summary["machine"] = f"{platform.machine()} {torch.get_num_threads()} torch thread(s)"
    print(json.dumps({"benchmark": "live", **summary}))


if __name__ == "__main__":
    main()
