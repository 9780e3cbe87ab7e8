"""How the portrait avatar holds up when the head turns (issue #16); prints one JSON line per portrait.

    PYTHONPATH=. python benchmarks/head_turn.py [--only shipped,obama] [--size 512] [--sheet sweep.jpg]

Portraits: the shipped one (a hat and glasses), skimage's astronaut (big hair), the White House photos of
Obama and Biden read from ../shared/data/portraits/ (skipped when absent), and `biden_close`, a head-and-
shoulders crop of the Biden photo (its face is small in the full-length original; cropped, the same face
fills a portrait as a selfie does).

Each portrait's avatar is built at `--size` and rendered at rest and in a sweep of poses (driving
rotations, degrees: yaw ±10 and ±20, pitch ±10, roll ±5, and two combined turns). Per portrait:

- coverage: in each posed frame, the share of the pixels inside the posed head-and-hair silhouette where
  the avatar's layer, as composited, has alpha ≥ 0.99 (the rest is background showing through the head).
  The silhouette is computed from the geometry, not from the rendered alpha: the posed ICT mesh's outer
  surface (face, scalp, neck, eyes) rasterised, united with the hair, moved rigidly with the head. The
  hair is the avatar's hair shell where it follows the head fully (above the jaw): the centres of the
  person matte's pixels (MediaPipe selfie segmentation) outside the mesh, at the depth of the head's
  outline; its moved centres are splatted and closed with a 5 px disc. The union is eroded by
  2 px (its anti-aliased rim is not a hole). Printed: the lowest coverage over the poses and each pose's.
  Goal ≥ 0.995 at every pose.
- pose_error_deg: the face tracker (MediaPipe landmarks + the ICT fit, identity and focal length fixed
  to those read off the rest frame) reads each frame's head rotation; the rotation relative to the rest
  frame's reading is compared with the driving one, per axis. Printed: the largest error over poses
  and axes, and each pose's. Goal ≤ 2°.
- seam: the mean Sobel gradient magnitude in a band along the jaw, neck and collar (12 px around the jaw
  contour, landmarks 2-14, and the pixels that see the neck where it blends from the head's motion to the
  body's, grown by 8 px) in the posed frame over the same in the rest frame. A tear or a gap adds edges:
  1.0 is as smooth as the rest frame. Printed: the largest over the poses.

`--sheet` saves a contact sheet: per portrait, the rest frame and the extreme poses.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from models.face_tracker import FaceTracker
from models.fitting import FaceFitter
from models.gaussian_avatar import PortraitAvatar, PortraitAvatarConfig, build_portrait_avatar
from models.head_model import HeadModel
from models.photo_view import project_points
from models.portrait_build import REGION_ID, triangle_labels
from models.transforms import euler_to_matrix, matrix_to_euler
from pipelines.image_io import DEFAULT_MAX_SIDE, save_image
from pipelines.portrait import DEFAULT_PORTRAIT, fit_portrait, load_portrait
from renderers import composite_over
from renderers.mesh_raster import rasterize_mesh

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "portraits"

#: Driving rotations (pitch, yaw, roll) in degrees; the first is the rest frame.
POSES = {
    "rest": (0, 0, 0),
    "yaw-20": (0, -20, 0),
    "yaw-10": (0, -10, 0),
    "yaw+10": (0, 10, 0),
    "yaw+20": (0, 20, 0),
    "pitch-10": (-10, 0, 0),
    "pitch+10": (10, 0, 0),
    "roll-5": (0, 0, -5),
    "roll+5": (0, 0, 5),
    "turn+": (10, 20, 5),
    "turn-": (-10, -20, -5),
}
SHEET_POSES = ("rest", "yaw-20", "yaw+20", "pitch-10", "pitch+10", "turn+", "turn-")
OUTER = (REGION_ID["face"], REGION_ID["head_and_neck"], REGION_ID["eyes"])


def portraits(only: set[str] | None) -> list[tuple[str, np.ndarray]]:
    from skimage import data

    found: list[tuple[str, np.ndarray]] = [
        ("shipped", load_portrait(DEFAULT_PORTRAIT)),
        ("astronaut", data.astronaut()),
    ]
    for name in ("obama", "biden"):
        path = SHARED / f"{name}.jpg"
        if path.exists():
            found.append((name, load_portrait(path, max_side=DEFAULT_MAX_SIDE)))
        else:
            print(f"skipping {name}: {path} is absent", file=sys.stderr)
    biden = dict(found).get("biden")
    if biden is not None:
        face = FaceTracker().faces(biden)[0].points[:, :2]
        centre, width = face.mean(0), np.ptp(face[:, 0])
        half = int(2.2 * width)
        x0, y0 = max(0, int(centre[0]) - half), max(0, int(centre[1]) - int(1.6 * width))
        found.append(("biden_close", np.ascontiguousarray(biden[y0 : y0 + 2 * half, x0 : x0 + 2 * half])))
    return [(n, p) for n, p in found if not only or n in only]


def posed_silhouette(avatar: PortraitAvatar, hair: torch.Tensor, rotation: torch.Tensor) -> np.ndarray:
    """Pixels [S, S] bool inside the posed head and hair (see the module docstring)."""
    head, camera = avatar.head, avatar.camera
    size = camera.height
    zero = torch.zeros(3)
    offset = avatar.photo_offset()
    with torch.no_grad():
        vertices = avatar.mesh(offset[None], rotation[None], zero[None])[0]
        points = project_points(vertices, camera).numpy()  # pixel x, pixel y, depth
    outer = head.triangles.numpy()[np.isin(triangle_labels(head), OUTER)]
    frags = rasterize_mesh(points, outer, size, size)
    inside = frags.triangle >= 0
    if len(hair):
        rot, shift = avatar.rigid_transform(rotation[None], zero[None])
        moved = hair @ rot[0].T + shift[0]
        xy = np.floor(project_points(moved, camera).numpy()[:, :2]).astype(int)
        ok = (xy >= 0).all(1) & (xy < size).all(1)
        splat = np.zeros((size, size), np.uint8)
        splat[xy[ok, 1], xy[ok, 0]] = 1
        splat = cv2.morphologyEx(splat, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
        inside |= splat > 0
    eroded = cv2.erode(inside.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    eroded[:2], eroded[-2:], eroded[:, :2], eroded[:, -2:] = 0, 0, 0, 0
    return eroded > 0


def hair_points(avatar: PortraitAvatar) -> torch.Tensor:
    """Rest positions [N, 3] of the hair that follows the head fully: the avatar's hair shell (its rigid
    Gaussians with weight 1, the centres of the person matte's pixels outside the mesh)."""
    return avatar.rigid_means[avatar.rigid_weights >= 1.0]


def seam_band(avatar: PortraitAvatar) -> np.ndarray:
    """Pixels [S, S] bool along the jaw, the neck's blend and the collar, at rest."""
    head, camera = avatar.head, avatar.camera
    size = camera.height
    with torch.no_grad():
        vertices = avatar.rest_mesh()
        points = project_points(vertices, camera).numpy()
    band = np.zeros((size, size), np.uint8)
    jaw = points[head.landmarks68[2:15].numpy(), :2].round().astype(np.int32)
    cv2.polylines(band, [jaw], False, 1, thickness=24)
    w = avatar.vertex_weights.numpy()
    blend = points[(w > 0.02) & (w < 0.98), :2].astype(int)
    blend = blend[((blend >= 0) & (blend < size)).all(1)]
    zone = np.zeros_like(band)
    zone[blend[:, 1], blend[:, 0]] = 1
    zone = cv2.dilate(
        cv2.morphologyEx(zone, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8)), np.ones((17, 17), np.uint8)
    )
    return (band | zone) > 0


def gradient(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(np.clip(image, 0, 1).astype(np.float32), cv2.COLOR_RGB2GRAY)
    return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))


def read_rotation(tracker: FaceTracker, fitter: FaceFitter, frame: np.ndarray, identity=None):
    """(rotation [3] radians, fit) the face tracker reads off a frame, None when it finds no face."""
    image = (np.clip(frame, 0, 1) * 255).round().astype(np.uint8)
    faces = tracker.faces(image)
    if not faces:
        return None, None
    size = (image.shape[1], image.shape[0])
    if identity is None:
        fit = fitter.fit_image(faces[0].points, size)
    else:
        fit = fitter.start_track(identity, faces[0].points, size)
    return np.asarray(fit.rotation, np.float64), fit


def run(name: str, photo: np.ndarray, size: int, head: HeadModel, tracker: FaceTracker) -> tuple[dict, list]:
    start = time.perf_counter()
    fit = fit_portrait(photo)
    avatar = build_portrait_avatar(
        photo, fit.to_identity(), fit.expression, head, PortraitAvatarConfig(crop_size=size)
    )
    build_s = time.perf_counter() - start
    hair = hair_points(avatar)
    band = seam_band(avatar)
    fitter = FaceFitter()
    expression = avatar.photo_offset()
    coverage, pose_error, seam, tiles = {}, {}, {}, []
    rest_read = rest_grad = rest_identity = None
    for pose, degrees in POSES.items():
        rotation = torch.tensor([math.radians(d) for d in degrees], dtype=torch.float32)
        rgb, alpha = avatar.render_layers(expression, rotation, torch.zeros(3), backend="cpu")
        frame = np.clip(composite_over(rgb, alpha, avatar.background), 0, 1)
        inside = posed_silhouette(avatar, hair, rotation)
        coverage[pose] = round(float((alpha[inside] >= 0.99).mean()), 4)
        grad = gradient(frame)[band].mean()
        if pose == "rest":
            rest_grad = grad
            rest_read, rest_fit = read_rotation(tracker, fitter, frame)
            rest_identity = None if rest_fit is None else rest_fit.to_identity()
        else:
            seam[pose] = round(float(grad / max(rest_grad, 1e-9)), 3)
            read, _ = read_rotation(tracker, fitter, frame, rest_identity)
            if read is None or rest_read is None:
                pose_error[pose] = None
            else:
                relative = euler_to_matrix(torch.from_numpy(rest_read)).T @ euler_to_matrix(
                    torch.from_numpy(read)
                )
                got = np.degrees(matrix_to_euler(relative).numpy())
                pose_error[pose] = round(float(np.abs(got - np.asarray(degrees)).max()), 2)
        if pose in SHEET_POSES:
            tiles.append((pose, frame))
    errors = [e for e in pose_error.values() if e is not None]
    record = {
        "portrait": name,
        "size": size,
        "build_s": round(build_s, 2),
        "hair_gaussians": len(hair),
        "coverage_min": min(coverage.values()),
        "pose_error_max_deg": max(errors) if errors else None,
        "pose_unread": sum(e is None for e in pose_error.values()),
        "seam_max": max(seam.values()),
        "coverage": coverage,
        "pose_error_deg": pose_error,
        "seam": seam,
    }
    return record, tiles


def contact_sheet(rows: list[tuple[str, list]], path: str, tile: int = 256) -> None:
    lines = []
    for name, tiles in rows:
        cells = []
        for pose, frame in tiles:
            cell = cv2.resize(frame, (tile, tile), interpolation=cv2.INTER_AREA)
            cell = (np.clip(cell, 0, 1) * 255).astype(np.uint8).copy()
            cv2.putText(cell, f"{name} {pose}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
            cells.append(cell)
        lines.append(np.concatenate(cells, axis=1))
    save_image(np.concatenate(lines, axis=0), path, quality=88)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated portrait names")
    parser.add_argument("--size", type=int, default=512, help="avatar crop size")
    parser.add_argument("--sheet", default="", help="save a contact sheet of the extreme poses here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    head, tracker = HeadModel(), FaceTracker()
    rows = []
    only = {n for n in args.only.split(",") if n} or None
    for name, photo in portraits(only):
        record, tiles = run(name, photo, args.size, head, tracker)
        print(json.dumps(record), flush=True)
        rows.append((name, tiles))
    if args.sheet and rows:
        contact_sheet(rows, args.sheet)


if __name__ == "__main__":
    main()
