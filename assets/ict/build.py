"""Build assets/ict/ict_head.npz, headsplat's compact copy of ICT-FaceKit Light (MIT, USC ICT).

Usage: python assets/ict/build.py [path/to/shared/data/ict-facekit] [--reference-only]

What is kept: every vertex up to and including the eyeballs (face, head and neck, mouth socket, eye
sockets, gums and tongue, teeth, eyeballs) and the polygons among them; the thin transparent eye
meshes (lacrimal fluid, eye blend, occlusion) and the eyelash strips are dropped. The first
NUM_IDENTITY identity modes and all 53 expressions are stored as int16 with one scale per mode
(resolution < 1e-4 cm), the neutral mesh as float32.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

NUM_VERTICES = 24591  # [0, 24591): face ... eyeballs (ICT-FaceKit README, "Face Model Topology")
NUM_IDENTITY = 50


def quantise(deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[M, V, 3] float → int16 [M, V, 3] and float32 [M] scales with deltas ≈ q * scale."""
    peak = np.abs(deltas).reshape(deltas.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)
    q = np.round(deltas / scale[:, None, None]).astype(np.int16)
    return q, scale


def main(source: Path) -> None:
    data = np.load(source / "ict_facekit_light.npz")
    indices = json.loads((source / "vertex_indices.json").read_text())
    faces = data["faces"]
    keep = np.all((faces < NUM_VERTICES), axis=1)  # -1 in the 4th slot marks a triangle
    id_q, id_scale = quantise(data["identity_deltas"][:NUM_IDENTITY, :NUM_VERTICES])
    ex_q, ex_scale = quantise(data["expression_deltas"][:, :NUM_VERTICES])
    out = Path(__file__).with_name("ict_head.npz")
    np.savez_compressed(
        out,
        neutral=data["neutral"][:NUM_VERTICES].astype(np.float32),
        faces=faces[keep].astype(np.int32),
        face_material=data["face_material"][keep].astype(np.int16),
        material_names=data["material_names"],
        face_uvs=data["face_uvs"][keep].astype(np.int32),
        uvs=data["uvs"].astype(np.float32),
        expression_names=data["expression_names"],
        identity_q=id_q,
        identity_scale=id_scale,
        expression_q=ex_q,
        expression_scale=ex_scale,
        landmarks68=np.asarray(indices["idx_to_landmark_verts"], np.int32),
        rigid_vertices=np.asarray([v for v in indices["idx_to_rigid_verts"] if v < NUM_VERTICES], np.int32),
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


#: Vertices whose original (unquantised) values are kept in reference_samples.npz, spread over every region.
NUM_REFERENCE_VERTICES = 96


def write_reference(source: Path) -> None:
    """assets/ict/reference_samples.npz: the original ICT values at a spread of vertices, so a test can
    check the shipped copy against ICT's own data on any clone (the full data is not shipped)."""
    data = np.load(source / "ict_facekit_light.npz")
    vertices = np.linspace(0, NUM_VERTICES - 1, NUM_REFERENCE_VERTICES).round().astype(np.int32)
    out = Path(__file__).with_name("reference_samples.npz")
    np.savez_compressed(
        out,
        vertices=vertices,
        neutral=data["neutral"][vertices].astype(np.float32),
        identity_deltas=data["identity_deltas"][:NUM_IDENTITY, vertices].astype(np.float32),
        expression_deltas=data["expression_deltas"][:, vertices].astype(np.float32),
    )
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--reference-only"]
    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "ict-facekit"
    folder = Path(args[0]) if args else default
    if "--reference-only" not in sys.argv:
        main(folder)
    write_reference(folder)
