"""Track a face in a photo or video: MediaPipe landmarks → ICT identity and a `Motion`.

    python -m pipelines.track INPUT -o motion.csv [--identity id.json] [--overlay check.mp4]

A photo gives a one-frame motion and the identity with its rest pose and camera; a video gives a motion
at the video's frame rate (rotation and translation relative to the identity's rest pose, the median
head pose of the clip). `--overlay` draws the fitted mesh over the input so a person can check the fit.
Exit status 2 with one line on stderr for bad input (no face, unreadable file, bad options).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from models.errors import HeadsplatError
from models.face_tracker import FaceAlignmentLandmarker, FaceTracker, FaceTrackerConfig
from models.latent import NUM_EXPRESSIONS, Identity, Motion
from pipelines.config_cli import add_config_arguments, config_from_args, field_docs, flag, no_flag
from pipelines.device import DEVICES
from pipelines.image_io import is_image_path, load_image, save_image
from pipelines.lazy import bind, bind_unless_main
from pipelines.motion_io import MOTION_SUFFIXES, save_identity, save_motion
from pipelines.video_io import VideoWriter, read_video

if TYPE_CHECKING:  # bound by pipelines.lazy (see _HEAVY)
    from models.fitting import FaceFit, FaceFitter, FitConfig
    from models.landmark_smoothing import smooth_landmarks
    from models.transforms import relative_pose

#: Names this module uses that import torch (see pipelines.lazy): `--help` and a wrong flag answer at once.
_HEAVY = {
    "FaceFit": "models.fitting:FaceFit",
    "FaceFitter": "models.fitting:FaceFitter",
    "FitConfig": "models.fitting:FitConfig",
    "smooth_landmarks": "models.landmark_smoothing:smooth_landmarks",
    "relative_pose": "models.transforms:relative_pose",
}
bind_unless_main(globals(), _HEAVY)

#: Chains of the 68-point layout (jaw, brows, nose, eyes, lips) as edges, for overlays.
IBUG68_EDGES = np.array(
    [(i, i + 1) for chain in ((0, 16), (17, 21), (22, 26), (27, 30), (31, 35), (36, 41), (42, 47), (48, 59), (60, 67))
     for i in range(chain[0], chain[1])]
    + [(41, 36), (47, 42), (59, 48), (67, 60)]
)  # fmt: skip
REGIONS_FILE = Path(__file__).resolve().parents[1] / "weights" / "mediapipe" / "face_mesh_regions.json"


#: The most ICT identity modes (of its 100) the tracker fits.
MAX_IDENTITY_MODES = 50
BACKENDS = ("mediapipe", "face-alignment")
DETECTORS = ("auto", "short", "full")


@dataclass
class TrackConfig:
    """Settings of face tracking, shared by the CLI and the app."""

    face_index: int = 0
    """Which face to follow when there are several, largest first."""
    backend: str = field(default="mediapipe", metadata=flag(choices=BACKENDS))
    """Landmarks: 'mediapipe' (the shipped 468-point mesh, fast) or 'face-alignment' (the optional 68-point
    FAN; its package and weights must already be on disk: nothing is downloaded)."""
    device: str = "cpu"
    """Device of the face-alignment backend; MediaPipe and the fit always run on the CPU (TFLite + numpy)."""
    detector: str = field(default="auto", metadata=flag(choices=DETECTORS))
    """MediaPipe's BlazeFace detector: 'short' (faces within ~2 m), 'full' (small/far faces) or 'auto' (both,
    merged)."""
    num_identity: int = field(default=40, metadata=flag(default_help=f"40; at most {MAX_IDENTITY_MODES}"))
    """ICT identity modes to fit."""
    identity_frames: int = 8
    """Video frames (spread over the clip) that share one identity fit."""
    smoothing: bool = field(
        default=True, metadata=flag(inverse="--no-smoothing", help="Do not smooth the landmark track.")
    )
    """One Euro smoothing of the landmark track (zero-phase for files: no lag)."""
    min_cutoff: float = 1.0
    """One Euro minimum cutoff (Hz): lower removes more jitter from a still face."""
    beta: float = 5.0
    """One Euro speed coefficient: higher follows fast lip motion more closely."""
    tracking_iterations: int = 4
    """Solver iterations per video frame (warm-started from the previous frame)."""
    threads: int = 2
    """CPU threads for the landmark models."""
    iris: bool = field(
        default=True,
        metadata=flag(inverse="--no-iris", help="Skip the iris model: no gaze (eyeLook* stay 0)."),
    )
    """Locate the irises and fit gaze (eyeLook* shapes); MediaPipe backend only."""
    max_frames: int = field(default=0, metadata=flag(default_help="0, all of them"))
    """Track only the first N video frames."""

    def check(self) -> None:
        """A HeadsplatError naming the first count no tracking run can use (each is a flag of the CLI)."""
        ranges = {
            "face_index": (0, None),
            "num_identity": (0, MAX_IDENTITY_MODES),
            "identity_frames": (1, None),
            "threads": (1, None),
            "max_frames": (0, None),  # 0: the whole video
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                allowed = f"at least {low}" if high is None else f"{low} to {high}"
                raise HeadsplatError(f"--{name.replace('_', '-')} must be {allowed}, got {value}")


@dataclass
class TrackCommand(TrackConfig):
    """TrackConfig plus what `python -m pipelines.track` reads and writes; each field is one of its flags."""

    input: str = field(kw_only=True, metadata=no_flag())  # the CLI's one positional argument
    """Photo (.jpg/.png/...) or video (.mp4/.mov/...) with a face."""
    output: str | None = field(default=None, metadata=flag("-o", "--output"))
    """Motion file to write: .csv (ARKit / Live Link Face layout), .npz or .json."""
    csv_translation: bool = False
    """With a .csv motion file: also write headsplat's HeadTranslationX/Y/Z columns (cm) after the 61
    values Live Link Face writes (importers made for the app's files may expect exactly those)."""
    identity: str | None = None
    """Identity file to write (.json): ICT coefficients, rest pose and camera."""
    overlay: str | None = None
    """Write the fitted mesh drawn over the input (.mp4 for a video, .png/.jpg for a photo)."""
    # The command resolves 'auto' itself; the library's default stays the plain CPU.
    device: str = field(default="auto", metadata=flag(choices=DEVICES))
    """Device of the face-alignment backend (auto: cuda if available); MediaPipe and the fit always run on the
    CPU (TFLite + numpy)."""
    seed: int = 0
    """Accepted for symmetry with the other commands; tracking is deterministic."""
    progress: bool = field(default=True, metadata=flag(inverse="--quiet", help="No progress bars."))
    """Show progress bars and the JSON summary (off with --quiet)."""


@dataclass
class TrackResult:
    """What tracking found: the identity (rest pose + camera), the motion, and per-frame details."""

    identity: Identity
    motion: Motion
    fits: list[FaceFit]  # absolute per-frame fits (for overlays)
    landmarks: np.ndarray  # [T, 468, 3] landmarks used for fitting (pixels; smoothed for videos)
    found: np.ndarray  # [T] bool: whether a face was detected in that frame (others are interpolated)
    fitter: FaceFitter = field(repr=False)


def _warn_count(caught: list) -> list[str]:
    seen = []
    for w in caught:
        text = str(w.message)
        if text not in seen:
            seen.append(text)
    return seen


def track_image(
    image: np.ndarray, config: TrackConfig | None = None, fitter: FaceFitter | None = None
) -> TrackResult:
    """Fit one photo (RGB uint8 [H, W, 3]): identity with rest pose and camera, and a one-frame motion."""
    config = config or TrackConfig()
    if _scheme(config) == "ibug68":
        faces = FaceAlignmentLandmarker(config.device).faces(image)
    else:
        tracker = FaceTracker(
            FaceTrackerConfig(detector=config.detector, num_threads=config.threads, iris=config.iris)
        )
        faces = [marks.with_iris() for marks in tracker.faces(image)]
    if not faces:
        raise HeadsplatError(
            "no face found in the image; use a photo where the face is visible and upright-ish"
        )
    points = _pick_face(faces, config.face_index)
    fitter = fitter or _fitter(config.num_identity, config.tracking_iterations, _scheme(config))
    fit = fitter.fit_image(points, (image.shape[1], image.shape[0]))
    identity = fit.to_identity()
    expression = fit.expression[None]
    motion = Motion(expression, np.zeros((1, 3)), np.zeros((1, 3)), fps=25.0)
    return TrackResult(identity, motion, [fit], points[None], np.ones(1, bool), fitter)


def _scheme(config: TrackConfig) -> str:
    if config.backend not in ("mediapipe", "face-alignment"):
        raise HeadsplatError(f"backend must be 'mediapipe' or 'face-alignment'; got {config.backend!r}")
    return "ibug68" if config.backend == "face-alignment" else "mediapipe468"


def _pick_face(faces: list[np.ndarray], index: int) -> np.ndarray:
    """The `index`-th face's landmarks (faces come largest first)."""
    if not 0 <= index < len(faces):
        raise HeadsplatError(
            f"--face-index {index} asked for, but {len(faces)} face(s) found; use 0 to {len(faces) - 1}"
        )
    return faces[index]


@lru_cache(maxsize=2)
def _fitter(num_identity: int, tracking_iterations: int, scheme: str = "mediapipe468") -> FaceFitter:
    return FaceFitter(
        FitConfig(num_identity=num_identity, tracking_iterations=tracking_iterations), scheme=scheme
    )


def track_frames(
    frames: Iterable[np.ndarray],
    fps: float,
    config: TrackConfig | None = None,
    total: int | None = None,
    progress: Callable | None = None,
) -> TrackResult:
    """Track a face through video frames (RGB uint8) into an identity and a Motion at `fps`."""
    config = config or TrackConfig()
    scheme = _scheme(config)
    if scheme == "ibug68":
        landmarker = FaceAlignmentLandmarker(config.device)

        def locate(frame: np.ndarray) -> np.ndarray | None:
            faces = landmarker.faces(frame)
            if not faces:
                return None
            last = next((r for r in reversed(raw) if r is not None), None)
            if last is None:
                return _pick_face(faces, config.face_index)
            return min(faces, key=lambda p: float(np.linalg.norm(p.mean(0) - last[:, :2].mean(0))))
    else:
        tracker = FaceTracker(
            FaceTrackerConfig(detector=config.detector, num_threads=config.threads, iris=config.iris)
        )

        def locate(frame: np.ndarray) -> np.ndarray | None:
            marks = tracker.track(frame, config.face_index)
            return None if marks is None else marks.with_iris()

    raw: list[np.ndarray | None] = []
    size = None
    iterator = progress(frames, total=total, desc="landmarks", unit="frame") if progress else frames
    for frame in iterator:
        size = (frame.shape[1], frame.shape[0])
        raw.append(locate(frame))
        if config.max_frames and len(raw) >= config.max_frames:
            break
    if not raw:
        raise HeadsplatError("the video has no frames")
    found = np.array([r is not None for r in raw])
    if not found.any():
        raise HeadsplatError("no face found in any frame of the video")
    landmarks = _fill_gaps(raw, found)
    if config.smoothing and len(landmarks) > 2:
        landmarks = smooth_landmarks(landmarks, fps, config.min_cutoff, config.beta, zero_phase=True)
    fitter = _fitter(config.num_identity, config.tracking_iterations, scheme)
    # Identity and focal length from frames spread over the clip (only those where a face was seen).
    seen = np.nonzero(found)[0]
    keys = seen[np.linspace(0, len(seen) - 1, min(config.identity_frames, len(seen))).round().astype(int)]
    key_fits = fitter.fit_frames([landmarks[i] for i in np.unique(keys)], size)
    identity = Identity(key_fits[0].identity, focal_px=key_fits[0].focal_px, image_size=size)
    fits: list[FaceFit] = []
    steps = range(len(landmarks))
    steps = progress(steps, desc="fitting", unit="frame") if progress else steps
    for t in steps:
        if not fits:
            fits.append(fitter.start_track(identity, landmarks[t], size))
        else:
            fits.append(fitter.track(landmarks[t], fits[-1]))
    rotation = np.stack([f.rotation for f in fits])
    translation = np.stack([f.translation for f in fits])
    rest_rotation = np.median(rotation, axis=0)
    rest_translation = np.median(translation, axis=0)
    rel_rot, rel_trans = relative_pose(rest_rotation, rest_translation, rotation, translation)
    identity = Identity(identity.coefficients, rest_rotation, rest_translation, identity.focal_px, size)
    expression = np.stack([f.expression for f in fits]).reshape(-1, NUM_EXPRESSIONS)
    motion = Motion(expression, rel_rot, rel_trans, fps)
    return TrackResult(identity, motion, fits, landmarks, found, fitter)


def track_video(
    path: str | Path, fps: float | None = None, progress: bool = False, with_audio: bool = False
) -> Motion | tuple[Motion, bool]:
    """A talking video's motion relative to the face's own rest, at `fps` (default: the video's).

    The pose is relative to the clip's median pose; expressions are relative to the face's resting look
    (its 10th percentile per shape), so a portrait driven by it keeps its own rest expression and only
    the changes carry over. This is what Talk's `--driving` uses and what `pipelines.train_motion
    --videos` tracks training videos with. `with_audio` also returns whether the video has sound.
    """
    from tqdm import tqdm

    video = read_video(path)
    bar = (lambda it, **kw: tqdm(it, file=sys.stderr, **kw)) if progress else None
    result = track_frames(video, video.fps, TrackConfig(), total=video.num_frames or None, progress=bar)
    motion = result.motion
    baseline = np.percentile(motion.expression, 10, axis=0)
    relative = Motion(
        np.clip(motion.expression - baseline, 0, 1), motion.rotation, motion.translation, motion.fps
    )
    relative = relative.resample(fps) if fps else relative
    return (relative, video.audio) if with_audio else relative


def lip_gap_and_anchors(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of a video: the lip gap [T] (MediaPipe inner-lip points 13/14, over the eye distance) and
    the eye corners, nose tip and bridge [T, 4, 2] (points 33, 263, 1, 168) in pixels.

    Every frame is read in the first frame's face crop, so what moves is the video, not the tracker's own
    crop-to-crop wobble: this is how Talk's output is checked for lip sync and jitter.
    """
    tracker = FaceTracker()
    gap, anchors, roi = [], [], None
    for frame in read_video(path):
        if roi is None:
            faces = tracker.faces(frame)
            if not faces:
                raise HeadsplatError(f"no face in the first frame of {Path(path).name}")
            roi = faces[0].roi
        marks = tracker.landmarks(frame, roi)
        p = marks.points
        gap.append(np.linalg.norm(p[14, :2] - p[13, :2]) / marks.inter_ocular)
        anchors.append(p[[33, 263, 1, 168], :2])
    return np.asarray(gap), np.asarray(anchors)


def landmark_jitter(points: np.ndarray, window: int = 5) -> float:
    """RMS distance (pixels) of tracked points [T, K, 2] from their `window`-frame moving average: the
    frame-to-frame shake, with slow, smooth drift left out."""
    kernel = np.ones(window) / window
    smooth = np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="same"), 0, points)
    half = window // 2
    residual = np.linalg.norm((points - smooth)[half : len(points) - half], axis=-1)
    return float(np.sqrt((residual**2).mean()))


def _fill_gaps(raw: list[np.ndarray | None], found: np.ndarray) -> np.ndarray:
    """[T, N, C] landmarks with frames without a face linearly interpolated (held at the ends)."""
    seen = np.nonzero(found)[0]
    stack = np.stack([raw[i] for i in seen]).astype(np.float64)
    if len(seen) == len(raw):
        return stack
    t = np.arange(len(raw))
    flat = stack.reshape(len(seen), -1)
    filled = np.empty((len(raw), flat.shape[1]))
    for c in range(flat.shape[1]):
        filled[:, c] = np.interp(t, seen, flat[:, c])
    return filled.reshape(len(raw), *stack.shape[1:])


# ------------------------------------------------------------------------------------------------
# Overlays
@lru_cache(maxsize=1)
def _mesh_edges() -> tuple[np.ndarray, np.ndarray]:
    regions = json.loads(REGIONS_FILE.read_text())
    contours = [
        pair
        for name, pairs in regions.items()
        if name != "tesselation" and "iris" not in name
        for pair in pairs
    ]
    return np.asarray(regions["tesselation"]), np.asarray(contours)


def draw_overlay(
    image: np.ndarray, fit: FaceFit, fitter: FaceFitter, landmarks: np.ndarray | None = None
) -> np.ndarray:
    """The image with the fitted head drawn on it: faint mesh wireframe (cyan) and eye/lip/brow/oval contours
    (yellow) of the fitted ICT model, and the detected contour landmarks (red dots) they should cover; iris
    centres in green."""
    fitted = np.full((fitter.num_landmarks, 2), np.nan)
    fitted[fitter.landmark_index] = fitter.project_fit(fit)
    scale = fit.inter_ocular_px / 150.0  # thicker lines and dots on big faces
    shift = 4  # sub-pixel drawing: coordinates in 1/16 px
    tess, contours = (
        _mesh_edges() if fitter.scheme == "mediapipe468" else (np.zeros((0, 2), int), IBUG68_EDGES)
    )

    def lines(canvas, edges, colour, width):
        a, b = fitted[edges[:, 0]], fitted[edges[:, 1]]
        ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
        segs = (np.stack([a[ok], b[ok]], 1) * (1 << shift)).round().astype(np.int32)
        cv2.polylines(canvas, list(segs), False, colour, max(1, round(width * scale)), cv2.LINE_AA, shift)

    wire = image.copy()
    lines(wire, tess, (0, 220, 255), 1.0)
    out = cv2.addWeighted(image, 0.6, wire, 0.4, 0.0)  # a faint mesh keeps the face visible underneath
    lines(out, contours, (255, 230, 0), 1.0)
    if landmarks is not None:
        points = np.asarray(landmarks)[np.unique(contours), :2]
        radius = round(max(0.7, 1.5 * scale) * (1 << shift))
        for x, y in (points * (1 << shift)).round().astype(int):
            cv2.circle(out, (int(x), int(y)), radius, (255, 40, 40), -1, cv2.LINE_AA, shift)
        if len(landmarks) == 470:  # iris centres (gaze) in green
            for x, y in (np.asarray(landmarks)[468:, :2] * (1 << shift)).round().astype(int):
                cv2.circle(out, (int(x), int(y)), radius * 2, (40, 255, 40), -1, cv2.LINE_AA, shift)
    return out


# ------------------------------------------------------------------------------------------------
# CLI
def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m pipelines.track`: every flag is a field of TrackCommand."""
    p = argparse.ArgumentParser(
        prog="python -m pipelines.track",
        description="Track a face in a photo or video into an ICT identity and a motion (expressions + head pose).",
    )
    p.add_argument("input", help=field_docs(TrackCommand)["input"])
    outputs = ("output", "identity", "overlay")
    add_config_arguments(p, TrackCommand, only=outputs)
    # One Euro's constants and the solver's iterations are tuned, not user settings.
    add_config_arguments(p, TrackCommand, skip=(*outputs, "min_cutoff", "beta", "tracking_iterations"))
    return p


def _check_outputs(config: TrackCommand) -> None:
    if not (config.output or config.identity or config.overlay):
        raise HeadsplatError(
            "nothing to write: give -o motion.csv, --identity id.json and/or --overlay check.mp4"
        )
    if config.output and Path(config.output).suffix.lower() not in MOTION_SUFFIXES:
        raise HeadsplatError(f"-o must end in {', '.join(MOTION_SUFFIXES)}; got {config.output!r}")
    if config.identity and Path(config.identity).suffix.lower() != ".json":
        raise HeadsplatError(f"--identity must be a .json file; got {config.identity!r}")
    from pipelines.cli import check_output

    outputs = [
        (config.output, "-o file"),
        (config.identity, "--identity file"),
        (config.overlay, "--overlay file"),
    ]
    written: list[str] = [config.input]
    for path, what in outputs:
        if path:
            check_output(path, written, what=what)  # neither the input nor another output of this run
            written.append(path)


def run(config: TrackCommand) -> TrackResult:
    """Track `config.input` and write the files it names."""
    config.check()
    _check_outputs(config)
    from pipelines.device import resolve_device

    config.device = resolve_device(config.device)  # the face-alignment backend's device
    progress = None
    if config.progress:
        from tqdm import tqdm

        progress = tqdm
    if is_image_path(config.input):
        image = load_image(config.input)
        if config.overlay and Path(config.overlay).suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v"):
            raise HeadsplatError("the input is a photo: write the overlay as .png or .jpg")
        result = track_image(image, config)
        if config.overlay:
            save_image(
                draw_overlay(image, result.fits[0], result.fitter, result.landmarks[0]), config.overlay
            )
    else:
        video = read_video(config.input)
        total = min(video.num_frames, config.max_frames) if config.max_frames else video.num_frames
        result = track_frames(iter(video), video.fps, config, total=total or None, progress=progress)
        if config.overlay:
            if is_image_path(config.overlay):
                raise HeadsplatError("the input is a video: write the overlay as .mp4")
            with VideoWriter(config.overlay, video.fps) as out:
                frames = zip(video, result.fits, result.landmarks)
                if progress:
                    frames = progress(frames, total=len(result.fits), desc="overlay", unit="frame")
                for frame, fit, marks in frames:
                    out.write(draw_overlay(frame, fit, result.fitter, marks))
    if config.output:
        save_motion(result.motion, config.output, csv_translation=config.csv_translation)
    if config.identity:
        save_identity(result.identity, config.identity)
    return result


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import run_cli

    config = config_from_args(TrackCommand, build_parser().parse_args(argv))
    bind(globals(), _HEAVY)
    # imageio-ffmpeg logs a warning for every rotated phone video, which read_video already handles.
    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)

    def work() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run(config)
        for text in _warn_count([w for w in caught if issubclass(w.category, UserWarning)]):
            print(f"warning: {text}", file=sys.stderr)
        missing = int((~result.found).sum())
        summary = {
            "frames": result.motion.num_frames,
            "fps": result.motion.fps,
            "frames_without_face": missing,
            "landmark_error_iod": round(float(np.mean([f.relative_error for f in result.fits])), 4),
            "focal_px": round(result.identity.focal_px, 1),
            "rest_pose_deg": [round(math.degrees(a), 2) for a in result.identity.rotation],
            "rest_translation_cm": [round(float(v), 2) for v in result.identity.translation],
        }
        if config.progress:
            print(json.dumps(summary))

    return run_cli(work, interrupted="interrupted; files already finished were kept, none is half-written")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
