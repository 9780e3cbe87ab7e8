"""Time to evaluate the ICT head model for 250 frames (10 s at 25 fps) on CPU; prints one JSON line.

Usage: python benchmarks/head_model.py [--frames 250] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from models.head_model import HeadModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = time.perf_counter()
    head = HeadModel(num_identity=50)
    load_s = time.perf_counter() - load_start
    gen = torch.Generator().manual_seed(0)
    identity = torch.randn(1, 50, generator=gen)
    expression = torch.rand(args.frames, 53, generator=gen)
    rotation = torch.randn(args.frames, 3, generator=gen) * 0.1
    translation = torch.randn(args.frames, 3, generator=gen)
    timings = {}
    with torch.inference_mode():
        for name, fn in {
            "vertices": lambda: head.vertices(identity, expression, rotation, translation),
            "vertices_and_normals": lambda: head.vertex_normals(
                head.vertices(identity, expression, rotation, translation)
            ),
        }.items():
            fn()  # warm-up
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - start)
            timings[name] = min(runs)
    print(
        json.dumps(
            {
                "benchmark": "head_model",
                "frames": args.frames,
                "vertices": head.num_vertices,
                "threads": torch.get_num_threads(),
                "load_s": round(load_s, 3),
                "vertices_s": round(timings["vertices"], 4),
                "vertices_ms_per_frame": round(1000 * timings["vertices"] / args.frames, 3),
                "vertices_and_normals_s": round(timings["vertices_and_normals"], 4),
                "machine": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
