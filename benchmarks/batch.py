"""Batch throughput: clips per minute of the local engine with 1 and 2 workers; prints one JSON line.

    PYTHONPATH=. python benchmarks/batch.py                        # 8 one-second clips, 256² crop, CPU
    PYTHONPATH=. python benchmarks/batch.py --workers 1,2,4 --items 16 --driver speech

Every run renders the same manifest (the shipped portrait, one motion per item) into a fresh folder.
The avatar is built once beforehand into a shared cache and timed on its own (a batch pays it once per
portrait), so the runs measure rendering throughput: worker start-up, motion, rendering and encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from models.latent import Motion
from pipelines.audio_io import load_audio, save_wav
from pipelines.batch import BatchConfig, cpu_count, run_batch
from pipelines.drivers import DEFAULT_AUDIO
from pipelines.motion_io import save_motion
from pipelines.portrait import DEFAULT_PORTRAIT


def write_manifest(folder: Path, items: int, seconds: float, size: int, driver: str) -> Path:
    """A manifest of `items` clips of `seconds` each: idle motions, or slices of the shipped speech."""
    rows = []
    speech = load_audio(DEFAULT_AUDIO) if driver == "speech" else None
    for i in range(items):
        row = {"portrait": str(DEFAULT_PORTRAIT), "output": f"clip{i:03d}.mp4", "size": size, "crop": True}
        if speech is not None:
            start = int(i * 0.37 * 16000) % max(1, len(speech) - int(seconds * 16000))
            row["audio"] = str(
                save_wav(speech[start : start + int(seconds * 16000)], folder / f"speech{i}.wav")
            )
        else:
            row["motion"] = str(
                save_motion(Motion.idle(round(seconds * 25), 25.0, seed=i), folder / f"idle{i}.npz")
            )
        rows.append(row)
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=8, help="clips per run (default: 8)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each clip (default: 1)")
    parser.add_argument("--size", type=int, default=256, help="render size of the face crop (default: 256)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: 1,2)")
    parser.add_argument("--driver", default="idle", choices=("idle", "speech"), help="what drives the clips")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default: cpu")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="headsplat-bench-") as tmp:
        root = Path(tmp)
        manifest = write_manifest(root, args.items, args.seconds, args.size, args.driver)
        cache = root / "avatars"
        # Build the avatar once (a one-item batch), so every timed run finds it in the cache.
        warm = root / "warm.jsonl"
        warm.write_text(manifest.read_text().splitlines()[0] + "\n")
        start = time.perf_counter()
        summary = run_batch(BatchConfig(str(warm), str(root / "warm"), workers=1, device=args.device,
                                        cache_dir=str(cache), progress=False))  # fmt: skip
        build_s = time.perf_counter() - start
        if summary.failed:
            sys.exit(f"warm-up failed: {summary.failed[0].error}")
        runs = []
        for workers in counts:
            start = time.perf_counter()
            summary = run_batch(BatchConfig(str(manifest), str(root / f"out{workers}"), workers=workers,
                                            device=args.device, cache_dir=str(cache), progress=False))  # fmt: skip
            wall = time.perf_counter() - start
            ok = [r for r in summary.results if r.status == "ok"]
            runs.append({
                "workers": workers,
                "ok": len(ok),
                "wall_s": round(wall, 2),
                "clips_per_min": round(60.0 * len(ok) / wall, 2),
                "mean_item_s": round(sum(r.seconds for r in ok) / max(1, len(ok)), 2),
            })  # fmt: skip
    print(json.dumps({
        "benchmark": "batch",
        "engine": "local",
        "items": args.items,
        "clip_seconds": args.seconds,
        "size": args.size,
        "driver": args.driver,
        "device": args.device,
        "cpus": cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "first_run_with_avatar_build_s": round(build_s, 2),
        "runs": runs,
        "machine": platform.processor() or platform.machine(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
