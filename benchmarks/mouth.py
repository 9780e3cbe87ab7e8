"""How real Talk's mouth looks, over real portraits (issue #20); prints one JSON line per portrait.

    PYTHONPATH=. python benchmarks/mouth.py [--only shipped,obama] [--size 256] [--sheet mouth.jpg]
                                            [--inputs benchmarks/results/mouth_inputs]

Portraits: the shipped one, skimage's astronaut, the White House photos of Obama and Biden (read from
../shared/data/portraits/, skipped when absent) and two open-mouth portraits, `shipped_open.png` and
`astronaut_open.png`: Talk's own frame of the shipped portrait and of the astronaut with jawOpen = 0.5,
pasted back into the photo. They are read from `--inputs` (made and written there when missing), so runs
of different revisions compare the same images; benchmarks/results/mouth_inputs/ holds the committed ones.

Per portrait (Talk with `cache_dir=""`, so every avatar is built fresh):

- first_frame_mouth_psnr_db: Talk's first frame (full photo, face pasted back) under a neutral motion
  (1 s of all-zero expression and pose) against the photo, PSNR inside the mouth box: the bounding box of
  the lips' outer landmarks (MediaPipe's tracker on the photo) grown by 25% of its width on every side.
  Goal ≥ 28 dB.
- closed_in_silence: Talk on the shipped speech (head still), the lip gap tracked in its video
  (`pipelines.track.lip_gap_and_anchors`: inner-lip points 13/14 over the eye distance); the share of the
  frames inside real pauses where the gap is below CLOSED_GAP. Real pauses: flite's `pau` segments of at
  least 0.15 s after the first spoken phone (flite made the shipped speech, so its timings are exact),
  less 2 frames at each end for the lips to travel. Goal ≥ 0.9. The shipped speech has two such pauses
  (0.66-0.88 s and 6.47-6.73 s), which leave 4 frames at 25 fps: each is a quarter of the share.
- inner_lip_lab, skin_lab, delta_L: mean CIELAB (sRGB, D65; L* in 0-100) of the pixels inside the tracked
  inner-lip ring and of two cheek patches, over the open frames (gap in the top quarter of the video's
  range), and inner-lip L* minus skin L*. They describe the drawn mouth interior; no goal.

CLOSED_GAP = 0.018 was read off the shipped (closed-mouth) portrait at revision 2133123, next to 3x crops
of its speech video's frames. Tracked gaps: the photo itself 0.006; Talk's frames before the first word
0.0095; the 4 real-pause frames 0.009-0.017; open vowels (AA AE AO AW AY OW) median 0.11, p10 0.017. Of
36 frames with gaps of 0.013-0.026 looked at by eye, every one at 0.018 or more shows the mouth interior
between the lips and every one that looks closed is below 0.018 (at most 0.0177); from 0.0135 to 0.018
the tracker gives both (a thin slit can score 0.0135), so the threshold errs towards calling a thin slit
closed rather than closed lips open.

`--sheet` saves a contact sheet: per portrait, 3x-zoomed mouth crops of the photo and of the speech
video's frames with the smallest, the middle and the largest tracked gap.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from models.errors import HeadsplatError
from models.latent import EXPRESSION_INDEX, Motion
from pipelines.image_io import DEFAULT_MAX_SIDE, save_image
from pipelines.portrait import load_portrait
from pipelines.talk import DEFAULT_AUDIO, DEFAULT_PORTRAIT, TalkConfig, prepare_avatar, render_frames, talk

#: The shipped speech sample's text (assets/defaults/README.md), as in benchmarks/talk_lipsync.py.
TEXT = (
    "Hello! I am a talking head made of Gaussian splats. Give me a photo and some speech, "
    "and I will say it back to you."
)
SHARED_PORTRAITS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "portraits"
DEFAULT_INPUTS = Path(__file__).resolve().parent / "results" / "mouth_inputs"
PORTRAITS = ("shipped", "astronaut", "obama", "biden", "shipped_open", "astronaut_open")

#: MediaPipe face-mesh lip rings (FACEMESH_LIPS), each from the left mouth corner along the lower lip to
#: the right corner and back along the upper lip, so each is a polygon.
OUTER_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
INNER_LIPS = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
#: Cheek centres (MediaPipe points 205 and 425: below the cheekbones, clear of glasses); each skin patch
#: is a square of CHEEK_SIDE eye distances around one.
CHEEKS = (205, 425)
CHEEK_SIDE = 0.12

CLOSED_GAP = 0.018  # lip gap (over the eye distance) below which the lips count as closed; see above
MIN_PAUSE_S = 0.15
PAUSE_TRIM_FRAMES = 2
NEUTRAL_SECONDS, FPS = 1.0, 25.0
MOUTH_MARGIN = 0.25  # of the lips' width, on every side of their box
ZOOM = 3


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Portraits
def open_mouth_portrait(image: Path, out: Path) -> None:
    """Talk's frame of `image` with jawOpen = 0.5, pasted back into the photo, saved as `out` (png)."""
    photo, avatar = prepare_avatar(TalkConfig(image=str(image), cache_dir=""))
    motion = Motion.neutral(1, FPS)
    motion.expression[0, EXPRESSION_INDEX["jawOpen"]] = 0.5
    save_image(next(render_frames(photo, avatar, motion)), out)


def portrait_paths(names: list[str], inputs: Path, tmp: Path) -> dict[str, Path]:
    """Each wanted portrait's file; the astronaut is written into `tmp`, missing open-mouth ones into `inputs`."""
    from skimage import data

    astronaut = tmp / "astronaut.png"
    save_image(data.astronaut(), astronaut)
    paths = {"shipped": DEFAULT_PORTRAIT, "astronaut": astronaut}
    for name in ("obama", "biden"):
        paths[name] = SHARED_PORTRAITS / f"{name}.jpg"
        if name in names and not paths[name].exists():
            log(f"note: {paths[name]} is absent; {name} is skipped")
    for name, source in (("shipped_open", paths["shipped"]), ("astronaut_open", astronaut)):
        paths[name] = inputs / f"{name}.png"
        if name in names and not paths[name].exists():
            log(f"making {paths[name]} (jawOpen 0.5)")
            inputs.mkdir(parents=True, exist_ok=True)
            open_mouth_portrait(source, paths[name])
    return {name: paths[name] for name in names if paths[name].exists()}


# ------------------------------------------------------------------------------------------------
# Landmarks and measures
def photo_landmarks(image: np.ndarray) -> np.ndarray:
    """[468, 3] MediaPipe points (pixels) of the largest face, as Talk picks it."""
    from models.face_tracker import FaceTracker

    faces = FaceTracker().faces(image)
    if not faces:
        raise RuntimeError("the tracker finds no face")
    return faces[0].points


def mouth_box(points: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the outer lips' bounding box grown by MOUTH_MARGIN of its width, in the image."""
    lips = points[list(OUTER_LIPS), :2]
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    grow = MOUTH_MARGIN * (x1 - x0)
    return (
        max(0, math.floor(x0 - grow)),
        max(0, math.floor(y0 - grow)),
        min(shape[1], math.ceil(x1 + grow)),
        min(shape[0], math.ceil(y1 + grow)),
    )


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images (the error floored at 1e-10, so equal images give a finite 148 dB)."""
    mse = max(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), 1e-10)
    return float(10 * np.log10(255.0**2 / mse))


def pause_frames(fps: float, num_frames: int) -> np.ndarray | None:
    """Frame indices inside the shipped speech's real pauses (see the module docstring); None when flite's
    speech is not the shipped sample (then its timings say nothing about it)."""
    from pipelines.audio_io import load_audio
    from pipelines.tts import flite_speak

    speech, phones = flite_speak(TEXT, "slt")
    shipped = load_audio(DEFAULT_AUDIO)
    if abs(speech.size - shipped.size) > 0.01 * shipped.size:
        return None
    first_word = next(p.start for p in phones if p.label != "SIL")
    frames = []
    for p in phones:
        if p.label == "SIL" and p.start >= first_word and p.end - p.start >= MIN_PAUSE_S:
            lo = math.ceil(p.start * fps) + PAUSE_TRIM_FRAMES
            hi = min(num_frames, math.ceil(p.end * fps)) - PAUSE_TRIM_FRAMES
            frames.extend(range(lo, hi))
    return np.asarray(frames, int)


def masks(points: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the inner-lip ring and of the two cheek patches."""
    lips = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(lips, [np.round(points[list(INNER_LIPS), :2]).astype(np.int32)], 1)
    cheeks = np.zeros(shape[:2], np.uint8)
    half = 0.5 * CHEEK_SIDE * np.linalg.norm(points[33, :2] - points[263, :2])
    for centre in points[list(CHEEKS), :2]:
        (x0, y0), (x1, y1) = np.round(centre - half).astype(int), np.round(centre + half).astype(int)
        cheeks[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = 1
    return lips.astype(bool), cheeks.astype(bool)


def video_frames(path: Path, wanted: set[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{frame index: (frame, [468, 3] points)} for the `wanted` frames, tracked like `lip_gap_and_anchors`
    (every frame in the first frame's face crop)."""
    from models.face_tracker import FaceTracker
    from pipelines.video_io import read_video

    tracker, roi, kept = FaceTracker(), None, {}
    for i, frame in enumerate(read_video(path)):
        if roi is None:
            roi = tracker.faces(frame)[0].roi
        if i in wanted:
            kept[i] = frame, tracker.landmarks(frame, roi).points
    return kept


def lab_mean(pixels: list[np.ndarray]) -> list[float]:
    """Mean CIELAB of RGB uint8 pixels [N, 3] (OpenCV's sRGB → L*a*b*, D65)."""
    rgb = np.concatenate(pixels).astype(np.float32)[None] / 255
    return [round(float(v), 2) for v in cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)[0].mean(0)]


# ------------------------------------------------------------------------------------------------
# Contact sheet
def zoomed(image: np.ndarray, box: tuple[int, int, int, int], label: str) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = cv2.resize(image[y0:y1, x0:x1], None, fx=ZOOM, fy=ZOOM, interpolation=cv2.INTER_NEAREST)
    (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1)
    cv2.rectangle(crop, (0, 0), (w + 10, h + 12), (0, 0, 0), cv2.FILLED)
    cv2.putText(crop, label, (5, h + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return crop


def sheet_row(name: str, tiles: list[np.ndarray]) -> np.ndarray:
    """The tiles side by side under a strip with the portrait's name."""
    row = np.concatenate(tiles, axis=1)
    strip = np.full((30, row.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, name, (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, row], axis=0)


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)


# ------------------------------------------------------------------------------------------------
def measure(name: str, image: Path, size: int | None, tmp: Path) -> tuple[dict, list[np.ndarray]]:
    """One portrait's JSON record and its contact-sheet tiles."""
    from pipelines.motion_io import save_motion
    from pipelines.track import lip_gap_and_anchors
    from pipelines.video_io import read_video

    start = time.perf_counter()
    photo = load_portrait(image, DEFAULT_MAX_SIDE)  # as Talk reads it
    box = mouth_box(photo_landmarks(photo), photo.shape)
    x0, y0, x1, y1 = box

    common = {"image": str(image), "size": size, "cache_dir": "", "progress": False}  # fresh avatars

    log(f"{name}: neutral motion")
    neutral = save_motion(Motion.neutral(round(NEUTRAL_SECONDS * FPS), FPS), tmp / f"{name}_neutral.npz")
    out = talk(TalkConfig(**common, motion=str(neutral), output=str(tmp / f"{name}_neutral.mp4")))
    first = next(iter(read_video(out)))
    psnr = psnr_db(first[y0:y1, x0:x1], photo[y0:y1, x0:x1])

    log(f"{name}: speech")
    speech = tmp / f"{name}_speech.mp4"
    talk(TalkConfig(**common, output=str(speech), still=True))  # the shipped speech, head still
    video = read_video(speech)
    gap, _ = lip_gap_and_anchors(speech)
    pauses = pause_frames(video.fps, len(gap))
    closed = None if pauses is None or not len(pauses) else float(np.mean(gap[pauses] < CLOSED_GAP))

    log(f"{name}: mouth interior")
    low, span = float(gap.min()), float(np.ptp(gap))
    open_frames = np.nonzero(gap >= low + 0.75 * span)[0]
    picks = {
        "closed": int(np.argmin(gap)),
        "half": int(np.argmin(np.abs(gap - (low + 0.5 * span)))),
        "open": int(np.argmax(gap)),
    }
    tracked = video_frames(speech, set(open_frames.tolist()) | set(picks.values()))
    lip_pixels, skin_pixels = [], []
    for i in open_frames:
        frame, points = tracked[i]
        lips, cheeks = masks(points, frame.shape)
        lip_pixels.append(frame[lips])
        skin_pixels.append(frame[cheeks])
    inner, skin = lab_mean(lip_pixels), lab_mean(skin_pixels)

    # One box for the whole row: the photo's mouth box and the wide-open frame's, together.
    wide = mouth_box(tracked[picks["open"]][1], photo.shape)
    crop = (min(x0, wide[0]), min(y0, wide[1]), max(x1, wide[2]), max(y1, wide[3]))
    tiles = [zoomed(photo, crop, "photo")]
    tiles += [zoomed(tracked[i][0], crop, f"{kind} {gap[i]:.3f}") for kind, i in picks.items()]
    seconds = time.perf_counter() - start
    render_size = prepare_avatar(TalkConfig(**common))[1].camera.width  # talk() does not return it

    record = {
        "benchmark": "mouth",
        "portrait": name,
        "photo_size": [photo.shape[1], photo.shape[0]],
        "render_size": render_size,
        "frames": len(gap),
        "mouth_box": list(box),
        "first_frame_mouth_psnr_db": round(psnr, 2),
        "closed_in_silence": None if closed is None else round(closed, 3),
        "pause_frames": None if pauses is None else len(pauses),
        "closed_gap_below": CLOSED_GAP,
        "open_frames": len(open_frames),
        "inner_lip_lab": inner,
        "skin_lab": skin,
        "delta_L": round(inner[0] - skin[0], 2),
        "gap_range": [round(low, 4), round(low + span, 4)],
        "seconds": round(seconds, 1),
    }
    return record, tiles


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(PORTRAITS)}")
    parser.add_argument("--size", type=int, default=None, help="Talk's render size (default: Talk's own)")
    parser.add_argument("--sheet", help="save a contact sheet (jpg) of mouth crops here")
    parser.add_argument(
        "--inputs",
        type=Path,
        default=DEFAULT_INPUTS,
        help="folder of the open-mouth portraits (made if missing)",
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(PORTRAITS)
    unknown = sorted(set(names) - set(PORTRAITS))
    if unknown:
        parser.error(f"unknown portrait(s) {', '.join(unknown)}; choose from {', '.join(PORTRAITS)}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="mouth-") as tmp:
        for name, image in portrait_paths(names, args.inputs, Path(tmp)).items():
            try:
                record, tiles = measure(name, image, args.size, Path(tmp))
            except (HeadsplatError, RuntimeError) as err:  # e.g. no face found: the other portraits go on
                log(f"{name}: failed: {err}")
                print(json.dumps({"benchmark": "mouth", "portrait": name, "error": str(err)}), flush=True)
                continue
            print(json.dumps(record), flush=True)
            label = (
                f"{name}: mouth PSNR {record['first_frame_mouth_psnr_db']} dB, closed in silence "
                f"{record['closed_in_silence']}, delta L* {record['delta_L']} (tiles: tracked lip gap)"
            )
            rows.append(sheet_row(label, tiles))
    if args.sheet and rows:
        save_image(stack_rows(rows), args.sheet, quality=92)
        log(f"contact sheet: {args.sheet}")


if __name__ == "__main__":
    main()
