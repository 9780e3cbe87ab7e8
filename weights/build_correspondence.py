"""Derive the fixed MediaPipe-468 → ICT-FaceKit correspondence and write weights/ict_mediapipe_correspondence.npz.

Run from the repository root: `python weights/build_correspondence.py` (a few seconds; deterministic).

1. Align MediaPipe's canonical face (cm) to the ICT neutral face with a similarity transform (Umeyama) on
   13 anatomical points whose indices are known on both sides (eye corners, nose, mouth, chin, ...).
2. Project every MediaPipe point onto the closest point of the ICT face surface. Lips and eyelids are
   projected onto their own side only (upper vs lower, told apart by how far ICT's jawOpen and eyeBlink
   shapes move each triangle), so a closed mouth or eye does not swap them.
   Eyelid lines are matched by arc length along ICT's Multi-PIE lid landmarks instead (see `eyelid_points`).
3. Refine: fit ICT identity modes to the projected points, re-align, re-project on the fitted surface
   (three rounds); the final triangle + barycentric coordinates are valid on every ICT shape.
4. Drop points that still land more than `MAX_DISTANCE_CM` away from the surface.

Output arrays: `mediapipe_index` [M] int, `triangle` [M, 3] ICT vertex indices (a mesh triangle, or for
eyelid points two lid landmarks and a repeat: a point on their chord), `barycentric` [M, 3],
`distance_cm` [M] (after refinement), `scale` (cm per canonical unit, ~1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.head_model import HeadModel  # noqa: E402
from models.latent import EXPRESSION_INDEX  # noqa: E402

MEDIAPIPE = ROOT / "weights" / "mediapipe"
OUTPUT = ROOT / "weights" / "ict_mediapipe_correspondence.npz"
MAX_DISTANCE_CM = 0.5
IDENTITY_MODES = 50
IDENTITY_PRIOR = 1.0  # weight of ‖coefficients‖² (modes are ~N(0, 1)) against cm² of point error

#: (MediaPipe index, Multi-PIE 68 index): eye corners, nose bridge/tip/base, mouth corners, lip middles, chin.
ANCHORS = (
    (33, 36), (133, 39), (362, 42), (263, 45),  # right outer, right inner, left inner, left outer eye corner
    (168, 27), (4, 30), (2, 33),  # nose bridge between the eyes, tip, subnasale
    (61, 48), (291, 54), (0, 51), (17, 57), (13, 62), (152, 8),  # mouth corners, lip middles, chin
)  # fmt: skip


def load_canonical() -> np.ndarray:
    """MediaPipe canonical face vertices [468, 3] (cm, y up, face along +z like ICT)."""
    lines = (MEDIAPIPE / "canonical_face_model.obj").read_text().splitlines()
    points = np.array([[float(t) for t in ln.split()[1:4]] for ln in lines if ln.startswith("v ")])
    assert points.shape == (468, 3)
    return points


def contour_sets() -> dict[str, set[int]]:
    """MediaPipe indices of the upper/lower lip and eyelid contours (corners excluded)."""
    regions = json.loads((MEDIAPIPE / "face_mesh_regions.json").read_text())

    def chain(pairs):
        return {i for pair in pairs for i in pair}

    lips = regions["lips"]
    corners = {61, 291, 78, 308, 33, 133, 362, 263}
    sets = {
        "lip_lower": chain(lips[0:10]) | chain(lips[20:30]),
        "lip_upper": chain(lips[10:20]) | chain(lips[30:40]),
        "eyelid_lower_R": chain(regions["right_eye"][0:8]),
        "eyelid_upper_R": chain(regions["right_eye"][8:16]),
        "eyelid_lower_L": chain(regions["left_eye"][0:8]),
        "eyelid_upper_L": chain(regions["left_eye"][8:16]),
    }
    return {k: v - corners for k, v in sets.items()}


#: Eyelid contours from the outer to the inner corner: (MediaPipe chain, Multi-PIE 68 chain, restriction).
EYELIDS = (
    ((33, 246, 161, 160, 159, 158, 157, 173, 133), (36, 37, 38, 39), "eyelid_upper_R"),
    ((33, 7, 163, 144, 145, 153, 154, 155, 133), (36, 41, 40, 39), "eyelid_lower_R"),
    ((263, 466, 388, 387, 386, 385, 384, 398, 362), (45, 44, 43, 42), "eyelid_upper_L"),
    ((263, 249, 390, 373, 374, 380, 381, 382, 362), (45, 46, 47, 42), "eyelid_lower_L"),
)


def arc_parameters(points: np.ndarray) -> np.ndarray:
    """Normalised arc length [N] in [0, 1] along a polyline [N, 3]."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    length = np.concatenate([[0.0], np.cumsum(steps)])
    return length / length[-1]


def along_polyline(points: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points [len(t), 3] at normalised arc lengths t along a polyline [N, 3]."""
    s = arc_parameters(points)
    return np.stack([np.interp(t, s, points[:, c]) for c in range(3)], axis=1)


def eyelid_points(aligned: np.ndarray, surface: np.ndarray, landmarks68: np.ndarray) -> dict[int, tuple]:
    """ICT point of each MediaPipe eyelid point: the same fraction of the way along the lid line.

    Closest points would put MediaPipe's lid line (a thin curve over the eyeball) onto the wrong part of
    ICT's lid (its opening then differs by a third), so lid lines are matched by arc length between the
    eye corners, with ICT's Multi-PIE eye landmarks as the lid line. Returns, per MediaPipe index,
    (vertex a, vertex b, weight of b, target point [3]): a point on the chord between two lid landmarks.
    """
    found = {}
    for mp_chain, ict_chain, _ in EYELIDS:
        t = arc_parameters(aligned[list(mp_chain)])
        verts = landmarks68[list(ict_chain)]
        s = arc_parameters(surface[verts])
        for index, ti in zip(mp_chain[1:-1], t[1:-1]):
            seg = int(np.clip(np.searchsorted(s, ti) - 1, 0, len(s) - 2))
            frac = float((ti - s[seg]) / (s[seg + 1] - s[seg]))
            point = (1 - frac) * surface[verts[seg]] + frac * surface[verts[seg + 1]]
            found[index] = (int(verts[seg]), int(verts[seg + 1]), frac, point)
    return found


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising ‖s R source + t − target‖² (Umeyama 1991)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sig, vt = np.linalg.svd(b.T @ a / len(a))
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / (a**2).sum(1).mean()
    return float(scale), rot, mu_t - scale * rot @ mu_s


def closest_on_triangles(points: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point [P, 3], its nearest triangle (index into tri [T, 3, 3]), barycentrics [P, 3], distance."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    best_idx = np.zeros(len(points), int)
    best_bary = np.zeros((len(points), 3))
    best_dist = np.full(len(points), np.inf)
    ab, ac = b - a, c - a
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    for i, p in enumerate(points):
        # Project onto each triangle's plane, then clamp the barycentrics by testing the three edges.
        ap = p - a
        d20, d21 = (ap * ab).sum(1), (ap * ac).sum(1)
        denom = np.maximum(d00 * d11 - d01 * d01, 1e-12)
        v = (d11 * d20 - d01 * d21) / denom
        w = (d00 * d21 - d01 * d20) / denom
        bary = np.stack([1 - v - w, v, w], 1)
        inside = (bary >= 0).all(1)
        cand = [np.where(inside[:, None], bary, np.nan)]
        for e0, e1 in ((0, 1), (1, 2), (2, 0)):
            p0, p1 = tri[:, e0], tri[:, e1]
            edge = p1 - p0
            t = np.clip(((p - p0) * edge).sum(1) / np.maximum((edge * edge).sum(1), 1e-12), 0, 1)
            eb = np.zeros_like(bary)
            eb[:, e0], eb[:, e1] = 1 - t, t
            cand.append(eb)
        stacked = np.stack(cand)  # [4, T, 3]
        pts = np.einsum("ktj,tjc->ktc", np.nan_to_num(stacked), tri)
        dist = np.linalg.norm(pts - p, axis=-1)
        dist[0][~inside] = np.inf
        k, t = np.unravel_index(np.argmin(dist), dist.shape)
        best_idx[i], best_bary[i], best_dist[i] = t, stacked[k, t], dist[k, t]
    return best_idx, best_bary, best_dist


def build() -> dict[str, np.ndarray]:
    head = HeadModel(num_identity=IDENTITY_MODES)
    neutral = head.neutral.numpy().astype(np.float64)
    basis = head.identity_basis.numpy().reshape(IDENTITY_MODES, -1, 3).astype(np.float64)
    expr = head.expression_basis.numpy().reshape(53, -1, 3)
    triangles = head.triangles.numpy()[head.region_triangles("face").numpy()]
    canonical = load_canonical()
    landmarks68 = head.landmarks68.numpy()

    # Which face triangles belong to the upper/lower lip and eyelid (mean vertical motion in cm).
    def tri_dy(name: str) -> np.ndarray:
        return expr[EXPRESSION_INDEX[name], :, 1][triangles].mean(1)

    jaw, blink_l, blink_r = tri_dy("jawOpen"), tri_dy("eyeBlink_L"), tri_dy("eyeBlink_R")
    allowed = {
        "lip_lower": jaw < -1.5,
        "lip_upper": jaw > -1.0,
        "eyelid_upper_L": blink_l < -0.3,
        "eyelid_lower_L": blink_l > -0.1,
        "eyelid_upper_R": blink_r < -0.3,
        "eyelid_lower_R": blink_r > -0.1,
    }
    restriction = np.full(468, "", dtype=object)
    for name, members in contour_sets().items():
        restriction[sorted(members)] = name

    mp_idx = np.array([m for m, _ in ANCHORS])
    ict_idx = landmarks68[[k for _, k in ANCHORS]]
    scale, rot, trans = umeyama(canonical[mp_idx], neutral[ict_idx])
    print(f"initial similarity: scale {scale:.4f} cm per canonical unit")
    surface = neutral
    coefficients = np.zeros(IDENTITY_MODES)
    for round_ in range(4):
        aligned = canonical @ (scale * rot).T + trans
        tri_xyz = surface[triangles]
        corner_ids = np.zeros((468, 3), int)  # three ICT vertices per point (a mesh triangle, or a lid chord)
        bary = np.zeros((468, 3))
        dist = np.zeros(468)
        for name in ["", *allowed]:
            sel = np.nonzero(restriction == name)[0]
            mask = np.ones(len(triangles), bool) if name == "" else allowed[name]
            sub = np.nonzero(mask)[0]
            ti, bi, di = closest_on_triangles(aligned[sel], tri_xyz[sub])
            corner_ids[sel], bary[sel], dist[sel] = triangles[sub[ti]], bi, di
        lids = eyelid_points(aligned, surface, landmarks68)
        for index, (a, b, frac, point) in lids.items():
            corner_ids[index], bary[index] = (a, b, b), (1 - frac, frac, 0.0)
            dist[index] = np.linalg.norm(point - aligned[index])
        print(
            f"    eyelid points: mean {np.mean([dist[i] for i in lids]):.3f} cm from the aligned MediaPipe lid"
        )
        print(
            f"round {round_}: mean distance {dist.mean():.3f} cm, median {np.median(dist):.3f}, "
            f"over {MAX_DISTANCE_CM} cm: {(dist > MAX_DISTANCE_CM).sum()}"
        )
        if round_ == 3:
            break
        # Refit: identity modes so the ICT surface passes through the aligned MediaPipe points, then realign.
        good = dist < np.percentile(dist, 90)
        verts = corner_ids[good]  # [G, 3]
        w = bary[good]
        base = np.einsum("gk,gkc->gc", w, neutral[verts])
        modes = np.einsum("gk,mgkc->mgc", w, basis[:, verts])  # [K, G, 3]
        a_mat = modes.reshape(IDENTITY_MODES, -1).T
        rhs = (aligned[good] - base).reshape(-1)
        coefficients = np.linalg.solve(
            a_mat.T @ a_mat + IDENTITY_PRIOR * np.eye(IDENTITY_MODES), a_mat.T @ rhs
        )
        surface = neutral + np.tensordot(coefficients, basis, 1)
        fitted = np.einsum("gk,gkc->gc", w, surface[verts])
        scale, rot, trans = umeyama(canonical[good], fitted)
    keep = dist <= MAX_DISTANCE_CM
    keep[sorted(lids)] = True  # lid points are placed by arc length, not by distance
    print(
        f"kept {keep.sum()} of 468 points; identity norm of the refinement {np.linalg.norm(coefficients):.2f}"
    )
    return {
        "mediapipe_index": np.nonzero(keep)[0].astype(np.int32),
        "triangle": corner_ids[keep].astype(np.int32),
        "barycentric": bary[keep].astype(np.float32),
        "distance_cm": dist[keep].astype(np.float32),
        "scale": np.float32(scale),
    }


def main() -> None:
    arrays = build()
    tmp = OUTPUT.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(OUTPUT)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({OUTPUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
