"""MediaPipe face detection (BlazeFace short/full range) and the 468-point face mesh, run with ai-edge-litert.

Takes numpy RGB uint8 images [H, W, 3]; every coordinate it returns is in pixels of that image (x right,
y down). Decoding files is `pipelines.image_io`'s job. The models are Google's MediaPipe `.tflite` files
(Apache-2.0) shipped in `weights/mediapipe/`.

- `FaceTracker.detect(image)`: all faces, largest first (anchor decoding + weighted NMS as MediaPipe does).
- `FaceTracker.landmarks(image, roi)`: 468 points (x, y in pixels, z relative depth in pixels) for a
  rotated square region of interest (`FaceRoi`), with a face-presence score.
- `FaceTracker.iris(image, landmarks)`: the two iris centres (MediaPipe iris model) for gaze; on by default,
  stored in `FaceLandmarks.iris`, and `FaceLandmarks.with_iris()` gives the [470, 3] array the fitter takes.
- `FaceTracker.track(frame)`: video mode; the next crop comes from the previous landmarks and the detector
  only runs when the track is lost (presence below threshold) or on the first frame.

An `Interpreter` is not thread-safe: each `FaceTracker` owns its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.errors import HeadsplatError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "mediapipe"

#: Landmark indices of the outer eye corners (subject's right, subject's left) that set the crop roll,
#: as in MediaPipe's face_landmarks_to_roi graph.
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
#: Faces narrower than this (pixels) give unreliable landmarks.
MIN_FACE_PX = 64
NUM_LANDMARKS = 468
#: BlazeFace keypoint order.
DETECTION_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")


@dataclass(frozen=True)
class _DetectorSpec:
    """Anchor layout and thresholds of one BlazeFace model (from MediaPipe's graph options)."""

    file: str
    input_size: int
    strides: tuple[int, ...]  # one entry per anchor layer; equal strides share a feature map
    anchors_per_layer: int  # 2 with interpolated_scale_aspect_ratio=1, else 1
    min_score: float


DETECTORS = {
    "short": _DetectorSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2, 0.5),
    # The full-range model's 2304 outputs = one anchor on a 48×48 grid (stride 4 at 192 px).
    "full": _DetectorSpec("face_detection_full_range.tflite", 192, (4,), 1, 0.6),
}


def ssd_anchor_centres(spec: _DetectorSpec) -> np.ndarray:
    """Anchor centres [N, 2] in [0, 1] (MediaPipe SsdAnchorsCalculator with fixed_anchor_size)."""
    centres = []
    layer = 0
    while layer < len(spec.strides):
        stride = spec.strides[layer]
        repeats = 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            repeats += spec.anchors_per_layer
            layer += 1
        cells = math.ceil(spec.input_size / stride)
        ys, xs = np.meshgrid(
            (np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij"
        )
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, repeats, axis=0))
    return np.concatenate(centres).astype(np.float32)


@dataclass
class FaceDetection:
    """One detected face in image pixels."""

    box: np.ndarray  # [4] x0, y0, x1, y1
    keypoints: (
        np.ndarray
    )  # [6, 2] right eye, left eye, nose tip, mouth, right ear, left ear (subject's sides)
    score: float  # detector confidence in [0, 1]

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


@dataclass
class FaceRoi:
    """A rotated square crop: centre (pixels), side length (pixels), and angle of its x axis (radians).

    The crop's x axis points along (cos angle, sin angle) in the image (y down), so a face rolled in the
    image appears upright in the crop.
    """

    centre: np.ndarray  # [2] pixels
    size: float  # side length in pixels
    angle: float  # radians

    def crop_to_image(self, crop_size: int) -> np.ndarray:
        """[2, 3] affine map from crop pixels (of a crop_size² crop) to image pixels."""
        scale = self.size / crop_size
        c, s = math.cos(self.angle), math.sin(self.angle)
        linear = scale * np.array([[c, -s], [s, c]])
        offset = self.centre - linear @ np.array([crop_size / 2, crop_size / 2])
        return np.concatenate([linear, offset[:, None]], axis=1)


@dataclass
class FaceLandmarks:
    """The 468 MediaPipe face-mesh points of one face in image pixels."""

    points: np.ndarray  # [468, 3] x, y (pixels) and z (relative depth, pixels, smaller is nearer)
    presence: float  # face-presence probability in [0, 1]
    roi: FaceRoi  # the crop they came from
    iris: np.ndarray | None = (
        None  # [2, 2] iris centres (pixels), subject's right eye then left; None if not run
    )

    def with_iris(self) -> np.ndarray:
        """[470, 3] points: the 468 mesh points, then the two iris centres (z = 0), as `FaceFitter` takes them
        to fit gaze too; just the [468, 3] mesh when the iris was not located."""
        if self.iris is None:
            return self.points
        return np.concatenate([self.points, np.c_[self.iris, np.zeros(2, np.float32)]]).astype(np.float32)

    @property
    def inter_ocular(self) -> float:
        """Distance (pixels) between the outer eye corners."""
        return float(np.linalg.norm(self.points[RIGHT_EYE_OUTER, :2] - self.points[LEFT_EYE_OUTER, :2]))


@dataclass
class FaceTrackerConfig:
    """Settings of `FaceTracker`."""

    detector: str = "auto"
    """'short' (faces within ~2 m), 'full' (small/far faces), or 'auto' (both, overlapping boxes merged)."""
    num_threads: int = 2
    """CPU threads per interpreter."""
    min_detection_score: float | None = None
    """Detection threshold; None uses the model's own (0.5 short range, 0.6 full range)."""
    nms_iou: float = 0.3
    """Detections overlapping more than this (IoU) are blended into one."""
    roi_scale: float = 1.5
    """Crop side / face size: 1.5 leaves a 25% margin on each side, as MediaPipe does."""
    min_presence: float = 0.5
    """Below this face-presence probability a track is lost and the detector runs again."""
    iris: bool = True
    """Also locate the two iris centres (MediaPipe iris model, ~2 ms) for gaze."""
    weights_dir: str | None = None
    """Folder with the .tflite files; None uses the shipped weights/mediapipe/."""


@contextlib.contextmanager
def _native_stderr_silenced():
    """Silence file descriptor 2 briefly: the TFLite runtime prints an INFO line from C++ when it sets up
    its CPU delegate, which would break the CLIs' one-line error messages."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load_interpreter(path: Path, num_threads: int):
    if not path.exists():
        raise HeadsplatError(
            f"MediaPipe model missing: {path}; restore weights/mediapipe/ from the repository"
        )
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    with _native_stderr_silenced():
        interpreter.allocate_tensors()
    return interpreter


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float64), -100.0, 100.0)))


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB uint8 image [H, W, 3]; returns it C-contiguous."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise HeadsplatError(
            f"face tracking needs an RGB uint8 image [H, W, 3]; got shape {shape} dtype {dtype} "
            "(load files with pipelines.image_io.load_image)"
        )
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise HeadsplatError(f"image of {image.shape[1]}×{image.shape[0]} pixels is too small to hold a face")
    return np.ascontiguousarray(image)


def sample_crop(image: np.ndarray, roi: FaceRoi, crop_size: int) -> np.ndarray:
    """The rotated square `roi` resampled to [crop_size, crop_size, 3] (area-filtered when shrinking a lot)."""
    affine = roi.crop_to_image(crop_size)
    shrink = roi.size / crop_size
    if shrink > 2.0:
        # Bilinear warping of a much larger region aliases; pre-shrink the bounding region with INTER_AREA.
        half = roi.size / math.sqrt(2) + 2
        x0, y0 = (np.floor(roi.centre - half)).astype(int)
        x1, y1 = (np.ceil(roi.centre + half)).astype(int)
        h, w = image.shape[:2]
        region = image[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
        if region.size == 0:
            return np.zeros((crop_size, crop_size, 3), np.uint8)
        factor = 1.5 / shrink  # keep ~1.5 source pixels per crop pixel for the bilinear warp
        small = cv2.resize(
            region,
            (max(1, round(region.shape[1] * factor)), max(1, round(region.shape[0] * factor))),
            interpolation=cv2.INTER_AREA,
        )
        fx, fy = small.shape[1] / region.shape[1], small.shape[0] / region.shape[0]
        to_small = np.array([[fx, 0, -fx * max(x0, 0)], [0, fy, -fy * max(y0, 0)]])
        affine = to_small[:, :2] @ affine
        affine[:, 2] += to_small[:, 2]
        image = small
    return cv2.warpAffine(
        image,
        affine,
        (crop_size, crop_size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def roi_from_detection(detection: FaceDetection, scale: float = 1.5) -> FaceRoi:
    """Crop for the landmark model: box centre, rolled along the eye line, side = scale × longer box side."""
    right_eye, left_eye = detection.keypoints[0], detection.keypoints[1]
    angle = math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
    centre = np.array([(detection.box[0] + detection.box[2]) / 2, (detection.box[1] + detection.box[3]) / 2])
    side = max(detection.box[2] - detection.box[0], detection.box[3] - detection.box[1])
    return FaceRoi(centre, float(side * scale), angle)


def roi_from_landmarks(points: np.ndarray, scale: float = 1.5) -> FaceRoi:  # points: [468, 2+] pixels
    """Crop for the next video frame: the landmarks' box in the eye-aligned frame, scaled, squared."""
    xy = points[:, :2]
    eye_line = xy[LEFT_EYE_OUTER] - xy[RIGHT_EYE_OUTER]
    angle = math.atan2(eye_line[1], eye_line[0])
    c, s = math.cos(angle), math.sin(angle)
    axes = np.array([[c, s], [-s, c]])  # rows: crop x and y axes in image coordinates
    local = xy @ axes.T
    lo, hi = local.min(0), local.max(0)
    centre = ((lo + hi) / 2) @ axes
    return FaceRoi(centre, float((hi - lo).max() * scale), angle)


def _weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float):
    """MediaPipe's WEIGHTED non-maximum suppression: overlapping boxes are averaged by score."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.ones(len(scores), bool)
    out = []
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        x0 = np.maximum(boxes[i, 0], boxes[:, 0])
        y0 = np.maximum(boxes[i, 1], boxes[:, 1])
        x1 = np.minimum(boxes[i, 2], boxes[:, 2])
        y1 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
        overlap = inter / np.maximum(areas[i] + areas - inter, 1e-12)
        group = remaining & (overlap > iou)
        group[i] = True
        w = scores[group][:, None]
        box = (boxes[group] * w).sum(0) / w.sum()
        kps = (keypoints[group] * w[:, :, None]).sum(0) / w.sum()
        out.append((box, kps, float(scores[i])))
        remaining &= ~group
    return out


class FaceTracker:
    """MediaPipe face detector + face mesh for one stream of images (owns its interpreters)."""

    LANDMARK_INPUT = 192

    def __init__(self, config: FaceTrackerConfig | None = None):
        self.config = config or FaceTrackerConfig()
        if self.config.detector not in ("auto", "short", "full"):
            raise HeadsplatError(f"detector must be 'auto', 'short' or 'full'; got {self.config.detector!r}")
        self.weights_dir = Path(self.config.weights_dir) if self.config.weights_dir else WEIGHTS_DIR
        self._detectors: dict[str, tuple] = {}
        self._mesh = _load_interpreter(self.weights_dir / "face_landmark.tflite", self.config.num_threads)
        details = self._mesh.get_output_details()
        self._mesh_input = self._mesh.get_input_details()[0]["index"]
        # Output order differs between converter versions: pick by size (1404 points, 1 score).
        self._mesh_points = next(d["index"] for d in details if int(np.prod(d["shape"])) == NUM_LANDMARKS * 3)
        self._mesh_score = next(d["index"] for d in details if int(np.prod(d["shape"])) == 1)
        self._iris = None  # the iris interpreter, loaded on first use
        self._track: FaceRoi | None = None
        self._previous_track: FaceRoi | None = None
        self._last_landmarks: FaceLandmarks | None = None
        self.redetections = 0  # how many times `track` had to run the detector

    # ------------------------------------------------------------------------------------------
    def _detector(self, kind: str):
        if kind not in self._detectors:
            spec = DETECTORS[kind]
            interp = _load_interpreter(self.weights_dir / spec.file, self.config.num_threads)
            outs = interp.get_output_details()
            regress = next(d["index"] for d in outs if d["shape"][-1] == 16)
            classify = next(d["index"] for d in outs if d["shape"][-1] == 1)
            self._detectors[kind] = (spec, interp, interp.get_input_details()[0]["index"], regress, classify)
        return self._detectors[kind]

    def _detect_with(self, image: np.ndarray, kind: str) -> list[FaceDetection]:
        spec, interp, inp, regress, classify = self._detector(kind)
        size = spec.input_size
        h, w = image.shape[:2]
        # Letterbox: the longer side fills the model input, the rest is padded (as MediaPipe does).
        square = max(h, w)
        scale = size / square
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((size, size, 3), np.uint8)
        ox, oy = (size - rw) // 2, (size - rh) // 2
        canvas[oy : oy + rh, ox : ox + rw] = resized
        tensor = canvas.astype(np.float32)[None] / 127.5 - 1.0
        interp.set_tensor(inp, tensor)
        interp.invoke()
        raw = interp.get_tensor(regress)[0]  # [N, 16]
        scores = _sigmoid(interp.get_tensor(classify)[0, :, 0])
        threshold = self.config.min_detection_score or spec.min_score
        keep = scores >= threshold
        if not keep.any():
            return []
        anchors = self._anchor_cache(kind, spec)[keep]
        raw, scores = raw[keep] / size, scores[keep]
        centre = raw[:, :2] + anchors
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        keypoints = raw[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]
        # Normalised letterbox coordinates → image pixels.
        to_px = square / size
        boxes = (boxes * size - np.array([ox, oy, ox, oy])) * to_px
        keypoints = (keypoints * size - np.array([ox, oy])) * to_px
        found = _weighted_nms(boxes, keypoints, scores, self.config.nms_iou)
        return [FaceDetection(b.astype(np.float32), k.astype(np.float32), s) for b, k, s in found]

    def _anchor_cache(self, kind: str, spec: _DetectorSpec) -> np.ndarray:
        key = "_anchors_" + kind
        if not hasattr(self, key):
            setattr(self, key, ssd_anchor_centres(spec))
        return getattr(self, key)

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """All faces in an RGB uint8 image [H, W, 3], largest first (boxes and keypoints in pixels)."""
        image = check_image(image)
        kinds = ("short", "full") if self.config.detector == "auto" else (self.config.detector,)
        faces = [face for kind in kinds for face in self._detect_with(image, kind)]
        if len(kinds) > 1 and len(faces) > 1:
            # The two models find the same near faces: blend their overlapping boxes.
            merged = _weighted_nms(
                np.stack([f.box for f in faces]),
                np.stack([f.keypoints for f in faces]),
                np.array([f.score for f in faces]),
                self.config.nms_iou,
            )
            faces = [FaceDetection(b.astype(np.float32), k.astype(np.float32), s) for b, k, s in merged]
        faces.sort(key=lambda f: -f.area)
        return faces

    def landmarks(self, image: np.ndarray, roi: FaceRoi) -> FaceLandmarks:
        """468 face-mesh points (image pixels) inside the rotated crop `roi`, with the face-presence score."""
        image = check_image(image)
        size = self.LANDMARK_INPUT
        crop = sample_crop(image, roi, size)
        self._mesh.set_tensor(self._mesh_input, crop.astype(np.float32)[None] / 255.0)
        self._mesh.invoke()
        raw = self._mesh.get_tensor(self._mesh_points).reshape(NUM_LANDMARKS, 3)
        presence = float(_sigmoid(self._mesh.get_tensor(self._mesh_score).reshape(())))
        affine = roi.crop_to_image(size)
        points = np.empty((NUM_LANDMARKS, 3), np.float32)
        points[:, :2] = raw[:, :2] @ affine[:, :2].T + affine[:, 2]
        points[:, 2] = raw[:, 2] * (roi.size / size)  # z shares x's scale in the crop
        return FaceLandmarks(points, presence, roi)

    #: Eye corners (outer, inner) of the subject's right and left eye, and the iris crop size / eye width.
    EYES = ((33, 133), (263, 362))
    IRIS_INPUT, IRIS_CROP_SCALE = 64, 2.3

    def iris(self, image: np.ndarray, landmarks: FaceLandmarks) -> np.ndarray:
        """Iris centres [2, 2] (pixels) of the subject's right and left eye, from MediaPipe's iris model.

        The model was trained on the subject's left eye as seen in the image; the other eye's crop is
        mirrored (as MediaPipe's iris graph does) and the result mirrored back.
        """
        if self._iris is None:
            self._iris = _load_interpreter(self.weights_dir / "iris_landmark.tflite", self.config.num_threads)
            details = self._iris.get_output_details()
            self._iris_in = self._iris.get_input_details()[0]["index"]
            self._iris_out = next(d["index"] for d in details if int(np.prod(d["shape"])) == 15)
        size = self.IRIS_INPUT
        centres = np.zeros((2, 2), np.float32)
        for eye, (outer, inner) in enumerate(self.EYES):
            a, b = landmarks.points[outer, :2], landmarks.points[inner, :2]
            left_to_right = b - a if eye == 0 else a - b  # along the image's x for an upright face
            roi = FaceRoi(
                (a + b) / 2,
                float(np.linalg.norm(b - a)) * self.IRIS_CROP_SCALE,
                math.atan2(left_to_right[1], left_to_right[0]),
            )
            crop = sample_crop(image, roi, size)
            mirrored = eye == 0
            if mirrored:
                crop = crop[:, ::-1]
            self._iris.set_tensor(self._iris_in, np.ascontiguousarray(crop, np.float32)[None] / 255.0)
            self._iris.invoke()
            centre = self._iris.get_tensor(self._iris_out).reshape(5, 3)[0, :2].copy()
            if mirrored:
                centre[0] = size - centre[0]
            affine = roi.crop_to_image(size)
            centres[eye] = affine[:, :2] @ centre + affine[:, 2]
        return centres

    def _with_iris(self, image: np.ndarray, marks: FaceLandmarks) -> FaceLandmarks:
        if self.config.iris:
            marks.iris = self.iris(image, marks)
        return marks

    def refine(self, image: np.ndarray, landmarks: FaceLandmarks) -> FaceLandmarks:
        """Run the mesh again on the crop derived from `landmarks` (tighter and better aligned than a detection)."""
        return self.landmarks(image, roi_from_landmarks(landmarks.points, self.config.roi_scale))

    def _landmarks_from_detection(self, image: np.ndarray, detection: FaceDetection) -> FaceLandmarks:
        marks = self.landmarks(image, roi_from_detection(detection, self.config.roi_scale))
        # Two passes on landmark-derived crops: the mesh output leans towards its crop's roll, and the
        # detector's crop is rougher; by the second pass the crop and the landmarks agree (a fixed point,
        # the same crop video tracking converges to).
        return self.refine(image, self.refine(image, marks))

    def faces(self, image: np.ndarray) -> list[FaceLandmarks]:
        """Landmarks of every face in a still image, largest first; warns about faces under 64 px."""
        out = []
        for detection in self.detect(image):
            marks = self._landmarks_from_detection(image, detection)
            _warn_if_small(marks)
            out.append(self._with_iris(image, marks))
        return out

    # ------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the current track (the next `track` call runs the detector)."""
        self._track = None
        self._previous_track = None
        self._last_landmarks = None

    def track(self, frame: np.ndarray, face_index: int = 0) -> FaceLandmarks | None:
        """Landmarks of one face in a video frame, reusing the previous frame's crop; None if no face.

        The detector runs on the first frame and whenever the face-presence score drops below
        `min_presence`; then the face nearest the last one (or `face_index`, largest first) is taken.
        """
        frame = check_image(frame)
        if self._track is not None:
            marks = self.landmarks(frame, self._predicted_roi())
            if marks.presence >= self.config.min_presence:
                self._set_track(roi_from_landmarks(marks.points, self.config.roi_scale))
                self._last_landmarks = marks
                return self._with_iris(frame, marks)
        self.redetections += 1
        detections = self.detect(frame)
        if not detections:
            self._track = None
            return None
        if self._last_landmarks is not None:
            last = self._last_landmarks.points[:, :2].mean(0)
            chosen = min(detections, key=lambda d: np.linalg.norm(d.keypoints[:2].mean(0) - last))
        elif face_index < len(detections):
            chosen = detections[face_index]
        else:
            raise HeadsplatError(
                f"face index {face_index} asked for, but only {len(detections)} face(s) found; "
                f"use an index below {len(detections)}"
            )
        marks = self._landmarks_from_detection(frame, chosen)
        if marks.presence < self.config.min_presence:
            self._track = None
            return None
        _warn_if_small(marks)
        self._previous_track = None
        self._set_track(roi_from_landmarks(marks.points, self.config.roi_scale))
        self._last_landmarks = marks
        return self._with_iris(frame, marks)

    def _set_track(self, roi: FaceRoi) -> None:
        self._previous_track, self._track = self._track, roi

    def _predicted_roi(self) -> FaceRoi:
        """Next frame's crop: the last one moved on at constant velocity (position and roll).

        The mesh model's output leans towards the crop's orientation, so a crop that lags a turning head
        by a frame biases the landmarks; extrapolating removes most of that lag.
        """
        last, before = self._track, self._previous_track
        if before is None:
            return last
        turn = math.remainder(last.angle - before.angle, 2 * math.pi)
        return FaceRoi(2 * last.centre - before.centre, last.size, last.angle + turn)


class FaceAlignmentLandmarker:
    """Optional 68-point backend: Bulat & Tzimiropoulos' FAN (the `face-alignment` package, BSD-3) with
    its S3FD detector. Used only when the package is installed and its weights are already on disk (in
    torch's hub cache): nothing is downloaded at run time. Points follow the iBUG/Multi-PIE 68 layout,
    which `FaceFitter(scheme="ibug68")` fits directly to ICT's own landmark vertices.
    """

    WEIGHTS = ("2DFAN4*.zip", "s3fd-*.pth")

    def __init__(self, device: str = "cpu"):
        import torch

        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        missing = [pattern for pattern in self.WEIGHTS if not any(checkpoints.glob(pattern))]
        if missing:
            raise HeadsplatError(
                f"face-alignment weights not found in {checkpoints} ({', '.join(missing)}); headsplat does not "
                "download them: fetch them once with face-alignment itself, or use the default MediaPipe backend"
            )
        try:
            import face_alignment
        except ImportError as err:
            raise HeadsplatError(
                "the face-alignment backend needs the optional package: pip install face-alignment"
            ) from err
        kind = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        self._model = face_alignment.FaceAlignment(kind, device=device, face_detector="sfd")

    def faces(self, image: np.ndarray) -> list[np.ndarray]:
        """68 landmarks [68, 2] (pixels) of every face in an RGB uint8 image, largest first."""
        image = check_image(image)
        found = self._model.get_landmarks_from_image(image) or []
        found = [np.asarray(points, np.float32)[:, :2] for points in found]
        found.sort(key=lambda p: -float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])))
        for points in found:
            _warn_if_small_width(float(np.ptp(points[:, 0])))
        return found


def _warn_if_small(marks: FaceLandmarks) -> None:
    _warn_if_small_width(float(np.ptp(marks.points[:, 0])))


def _warn_if_small_width(width: float) -> None:
    if width < MIN_FACE_PX:
        warnings.warn(
            f"the face is only {width:.0f} px wide (under {MIN_FACE_PX} px): landmarks and fit will be "
            "unreliable; use a larger or closer photo",
            stacklevel=4,
        )


__all__ = [
    "DETECTION_KEYPOINTS",
    "FaceAlignmentLandmarker",
    "FaceDetection",
    "FaceLandmarks",
    "FaceRoi",
    "FaceTracker",
    "FaceTrackerConfig",
    "roi_from_detection",
    "roi_from_landmarks",
    "sample_crop",
    "ssd_anchor_centres",
]
