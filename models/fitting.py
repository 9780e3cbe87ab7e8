"""Fit the ICT-FaceKit head to face landmarks: identity, expression, head pose, focal length.

The camera is the portrait's, `renderers.camera.Camera.photo`: at the world origin looking along −z at
the head model (y up, face along +z), principal point at the image centre. A posed head is
`HeadModel.vertices(identity, expression, rotation, translation)`; its pixels are `fit.camera.project`.
Landmarks are in OpenCV's pixel convention (pixel centres at whole coordinates, as MediaPipe gives them),
so the fitter projects with `OPENCV_PIXEL_CENTRE`: half a pixel from the renderer's, same camera.

The fit uses only the landmarks' ICT points (`models.landmark_correspondence`) and a Levenberg–Marquardt
solver with analytic Jacobians in numpy (fast enough for video: a warm-started tracking step is a few
milliseconds). Expression weights stay in [0, 1] (projected steps with an active set); identity and
expression have Gaussian priors; MediaPipe's relative depth (z) adds a weak depth term. Gaze comes from
the iris centres afterwards (`models.gaze`).

Re-exported where callers have always found them: `FaceFit` and the fit's camera helpers (`models.face_fit`),
pose algebra (`models.transforms`), landmark smoothing (`models.landmark_smoothing`), `Camera`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from models.errors import HeadsplatError
from models.face_fit import (
    FaceFit,
    default_focal,
    expression_value,
    landmark_principal_point,
    project,
    world_to_camera,
)
from models.gaze import EyeGaze
from models.head_model import HeadModel
from models.landmark_correspondence import CORRESPONDENCE, LANDMARK_SCHEMES, LandmarkCorrespondence
from models.landmark_smoothing import OneEuroFilter, smooth_landmarks
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS, Identity
from models.transforms import compose_pose, euler_to_matrix_and_derivatives, matrix_to_euler, relative_pose
from renderers.camera import (
    OPENCV_PIXEL_CENTRE,
    PHOTO_WORLD_TO_CAMERA,
    Camera,
    project_points,
    projection_jacobian,
)

_WORLD_TO_CAMERA = np.array(PHOTO_WORLD_TO_CAMERA)  # float64, for the numpy solver
_AXES = _WORLD_TO_CAMERA[:3, :3]  # the photo camera's axes (rows) in world axes
#: Shapes that move the same points in opposite directions; both active at once is never meant.
ANTAGONISTS = tuple(
    (EXPRESSION_INDEX[a], EXPRESSION_INDEX[b])
    for a, b in (
        ("eyeBlink_L", "eyeWide_L"), ("eyeBlink_R", "eyeWide_R"), ("jawLeft", "jawRight"),
        ("mouthLeft", "mouthRight"), ("mouthSmile_L", "mouthFrown_L"), ("mouthSmile_R", "mouthFrown_R"),
        ("browDown_L", "browOuterUp_L"), ("browDown_R", "browOuterUp_R"), ("browDown_L", "browInnerUp_L"),
        ("browDown_R", "browInnerUp_R"), ("mouthPucker", "mouthStretch_L"), ("mouthPucker", "mouthStretch_R"),
        ("eyeLookIn_L", "eyeLookOut_L"), ("eyeLookIn_R", "eyeLookOut_R"), ("eyeLookUp_L", "eyeLookDown_L"),
        ("eyeLookUp_R", "eyeLookDown_R"),
    )
)  # fmt: skip
_ANT_A = np.array([a for a, _ in ANTAGONISTS])
_ANT_B = np.array([b for _, b in ANTAGONISTS])


_BLAS = None


def _single_threaded_blas():
    """Context limiting BLAS to one thread: the solver's matrices are tiny and threading only adds
    spin-waits (4× slower on a busy 2-core machine). A no-op without threadpoolctl."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:
            _BLAS = False
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# Settings
@dataclass
class FitConfig:
    """Settings of `FaceFitter`."""

    num_identity: int = 40
    """Identity modes to fit (≤ 50); the rest stay 0."""
    landmark_noise: float = 0.02
    """Expected landmark error as a fraction of the inter-ocular distance (MediaPipe on real photos: 1–2%).
    Residuals are divided by it, so the priors below are in natural units (a MAP estimate)."""
    identity_prior: float = 1.0
    """Weight of ‖identity‖² (modes are ~N(0, 1), so 1 is the Gaussian prior)."""
    expression_prior: float = 1.0
    """Weight of ‖expression‖² (keeps shapes the landmarks barely see near 0)."""
    expression_sparsity: float = 3.0
    """Weight of Σ expression (an L1 prior: prefers few active shapes over many small, cancelling ones)."""
    focal_prior: float = 10.0
    """Weight of (log f − log f_prior)²: focal length is weakly observable from one face."""
    antagonist_penalty: float = 50.0
    """Weight of (w_a · w_b)² for opposing shapes (blink/wide, left/right, smile/frown): they would
    otherwise cancel each other and both turn on."""
    depth_weight: float = 0.3
    """Weight of MediaPipe's relative depth (z) against the 2D landmarks (0 disables it)."""
    contour_weight: float = 2.0
    """Extra weight of lip and eyelid contour points (they carry mouth and blink)."""
    fit_gaze: bool = False
    """Let the landmark fit move the eyeLook* shapes; off by default: ICT's eyeLook shapes move only the
    lids, the 468-point mesh has no iris, so they would only trade off against blinks. Gaze comes from
    the iris centres instead (`FaceFitter.fit_gaze`)."""
    iterations: int = 30
    """Levenberg–Marquardt iterations of a full single-image fit."""
    tracking_iterations: int = 4
    """Iterations per video frame when warm-started from the previous one (identity fixed)."""


@dataclass
class _Frame:
    """Observations and per-frame unknowns of one image inside the solver."""

    uv: np.ndarray  # [M, 2] observed pixels of the correspondence points
    depth: np.ndarray | None  # [M] observed relative depth (pixels), or None
    scale: float  # inter-ocular distance in pixels, the residual unit
    params: np.ndarray = field(
        default_factory=lambda: np.zeros(NUM_EXPRESSIONS + 6)
    )  # w, rotation, translation
    px_per_cm: float = 0.0  # depth scale (focal / distance), held fixed during one solve so the cost is exact
    iris: np.ndarray | None = None  # [2, 2] observed iris centres (pixels), if any


class FaceFitter:
    """Fits ICT identity/expression/pose/focal to MediaPipe landmarks (numpy; analytic Jacobians)."""

    def __init__(
        self,
        config: FitConfig | None = None,
        head: HeadModel | None = None,
        scheme: str = "mediapipe468",
        correspondence=CORRESPONDENCE,
    ):
        """`scheme`: 'mediapipe468' (the face mesh, via the shipped correspondence) or 'ibug68' (the 68
        Multi-PIE/iBUG points of face-alignment and dlib, which are ICT's own landmark vertices)."""
        self.config = config or FitConfig()
        k = self.config.num_identity
        head = head or HeadModel(num_identity=max(k, 1))
        if k > head.num_identity:
            raise HeadsplatError(f"asked to fit {k} identity modes; the head model has {head.num_identity}")
        self.correspondence = LandmarkCorrespondence.load(scheme, head, correspondence)
        self.scheme = scheme
        self.num_landmarks = self.correspondence.num_landmarks
        self._right_eye, self._left_eye = self.correspondence.eye_corners
        self.landmark_index = (
            self.correspondence.landmark_index
        )  # [M] rows of the landmarks with an ICT point
        self.triangle = self.correspondence.triangle  # [M, 3] ICT vertices
        self.barycentric = self.correspondence.barycentric  # [M, 3]
        self.pivot = head.pivot.numpy().astype(np.float64)
        at_points = self.correspondence.points
        self.neutral = at_points(head.neutral.reshape(1, -1))[0]  # [M, 3]
        self.expression_basis = at_points(head.expression_basis)  # [53, M, 3]
        m = len(self.triangle)
        self.identity_basis = at_points(head.identity_basis[:k]) if k else np.zeros((0, m, 3))
        # Point-major copies [M, 3, n] so per-point Jacobians are batched matrix products.
        self._expression_by_point = np.ascontiguousarray(self.expression_basis.transpose(1, 2, 0))
        self._identity_by_point = np.ascontiguousarray(self.identity_basis.transpose(1, 2, 0))
        self._expression_flat = self.expression_basis.reshape(NUM_EXPRESSIONS, -1)
        self._identity_flat = self.identity_basis.reshape(k, 3 * m)
        self.num_identity = k
        self.num_points = len(self.landmark_index)
        weights = np.ones(self.num_points)
        weights[np.isin(self.landmark_index, self.correspondence.contours)] = self.config.contour_weight
        # 2D jaw-line points follow the visible outline, not fixed skin points: trust them less.
        weights[np.isin(self.landmark_index, self.correspondence.silhouette)] = 0.5
        self.point_weight = weights
        # Per-frame parameters the solver may move (expression weights, then 3 rotation, 3 translation).
        self.frame_free = np.ones(NUM_EXPRESSIONS + 6, bool)
        if not self.config.fit_gaze:
            for name, i in EXPRESSION_INDEX.items():
                if name.startswith("eyeLook"):
                    self.frame_free[i] = False
        self.gaze = EyeGaze(head, k)
        self._eye_rows = (
            int(np.nonzero(self.landmark_index == self._right_eye)[0][0]),
            int(np.nonzero(self.landmark_index == self._left_eye)[0][0]),
        )

    def fit_gaze(self, fit: FaceFit, iris: np.ndarray) -> FaceFit:
        """`fit` with its eyeLook* weights set from iris centres [2, 2] (pixels; subject's right, left):
        see `models.gaze`."""
        return replace(fit, expression=self.gaze.expression(fit, iris))

    # --------------------------------------------------------------------------------------------
    def points(self, identity: np.ndarray, expression: np.ndarray, rotation, translation) -> np.ndarray:
        """World positions [M, 3] (cm) of the correspondence points for one set of parameters."""
        shape = self._shape(
            np.asarray(identity, np.float64)[: self.num_identity], np.asarray(expression, np.float64)
        )
        rot, _ = euler_to_matrix_and_derivatives(np.asarray(rotation, np.float64))
        return (shape - self.pivot) @ rot.T + self.pivot + np.asarray(translation, np.float64)

    def points_from_params(self, params: np.ndarray, shared: np.ndarray) -> np.ndarray:
        """World points [M, 3] from solver vectors (per-frame [59], shared [K+1])."""
        return self.points(
            shared[: self.num_identity], params[:NUM_EXPRESSIONS], params[53:56], params[56:59]
        )

    def project_fit(self, fit: FaceFit) -> np.ndarray:
        """Pixels [M, 2] of the fitted correspondence points (rows match `landmark_index`)."""
        return project(self.points(fit.identity, fit.expression, fit.rotation, fit.translation), fit.camera)

    def _shape(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        offsets = expression @ self._expression_flat
        if len(identity):
            offsets = offsets + identity[: self.num_identity] @ self._identity_flat[: len(identity)]
        return self.neutral + offsets.reshape(-1, 3)

    def _observe(self, landmarks: np.ndarray) -> _Frame:
        landmarks = np.asarray(landmarks, np.float64)
        n = self.num_landmarks
        rows = (n, n + 2) if self.scheme == "mediapipe468" else (n,)
        if landmarks.ndim != 2 or landmarks.shape[0] not in rows or landmarks.shape[1] not in (2, 3):
            shapes = " or ".join(f"[{r}, 2|3]" for r in rows)
            raise HeadsplatError(
                f"this fitter ({self.scheme}) needs landmarks {shapes}; got {list(landmarks.shape)}"
            )
        if not np.all(np.isfinite(landmarks)):
            raise HeadsplatError("landmarks contain NaN or infinite values")
        # MediaPipe rows 468 and 469, when present, are the iris centres (subject's right, left): gaze.
        iris = landmarks[n : n + 2, :2].copy() if landmarks.shape[0] == n + 2 else None
        pts = landmarks[self.landmark_index]
        scale = float(np.linalg.norm(landmarks[self._right_eye, :2] - landmarks[self._left_eye, :2]))
        if scale < 1e-3:
            raise HeadsplatError("landmarks are degenerate (both eye corners at one point)")
        depth = pts[:, 2] if landmarks.shape[1] == 3 and self.config.depth_weight > 0 else None
        return _Frame(pts[:, :2].copy(), depth, scale, iris=iris)

    # --------------------------------------------------------------------------------------------
    def _residuals(
        self, frame: _Frame, shared: np.ndarray, size, want_jacobian: bool, want_shared: bool = True
    ):
        """Weighted residuals [R] of one frame and, optionally, Jacobians wrt its own [R, 59] and shared
        [R, K+1] parameters (the shared one is None unless `want_shared`)."""
        k = self.num_identity
        w, rot_angles, trans = frame.params[:NUM_EXPRESSIONS], frame.params[53:56], frame.params[56:59]
        identity, focal = shared[:k], math.exp(shared[k])
        cx, cy = landmark_principal_point(*size)
        q = self._shape(identity, w) - self.pivot  # [M, 3]
        rot, drot = euler_to_matrix_and_derivatives(rot_angles)
        world = q @ rot.T + self.pivot + trans
        projected = project_points(world, focal, focal, cx, cy, _WORLD_TO_CAMERA, min_depth=1e-3)
        uv, depth = projected[:, :2], projected[:, 2]
        z = np.maximum(depth, 1e-3)
        unit = frame.scale * self.config.landmark_noise  # pixels of one expected landmark error
        sw = np.sqrt(self.point_weight) / unit  # [M]
        res = [((uv - frame.uv) * sw[:, None]).reshape(-1)]
        depth_w = 0.0
        if frame.depth is not None:
            # MediaPipe z is depth in pixels at the face's distance: compare centred depths.
            depth_w = math.sqrt(self.config.depth_weight) / unit
            px_per_cm = frame.px_per_cm or focal / float(z.mean())
            pred = px_per_cm * (depth - depth.mean())
            obs = frame.depth - frame.depth.mean()
            res.append((pred - obs) * depth_w)
        residual = np.concatenate(res)
        if not want_jacobian:
            return residual, uv
        m = self.num_points
        duv = projection_jacobian(world, focal, focal, _WORLD_TO_CAMERA, min_depth=1e-3)  # [M, 2, 3]
        duv *= sw[:, None, None]
        dshape = duv @ rot  # d(u, v)/d(unposed shape point)  [M, 2, 3]
        j_frame = np.empty((m, 2, NUM_EXPRESSIONS + 6))
        j_frame[:, :, :NUM_EXPRESSIONS] = dshape @ self._expression_by_point
        j_frame[:, :, 53:56] = duv @ (q @ drot.transpose(0, 2, 1)).transpose(1, 2, 0)
        j_frame[:, :, 56:59] = duv
        j_frame = j_frame.reshape(2 * m, -1)
        j_shared = None
        if want_shared:
            j_shared = np.empty((m, 2, k + 1))
            if k:
                j_shared[:, :, :k] = dshape @ self._identity_by_point
            j_shared[:, :, k] = (uv - (cx, cy)) * sw[:, None]
            j_shared = j_shared.reshape(2 * m, -1)
        if frame.depth is not None:
            # d(camera z)/d(world) is the camera's z axis in world axes; px-per-cm is held fixed within a step.
            dz_shape = (_AXES[2] @ rot) * px_per_cm * depth_w  # [3] per unposed point
            jz_frame = np.empty((m, NUM_EXPRESSIONS + 6))
            jz_frame[:, :NUM_EXPRESSIONS] = dz_shape @ self._expression_by_point
            jz_frame[:, 53:56] = ((q @ drot.transpose(0, 2, 1)) @ _AXES[2]).T * px_per_cm * depth_w
            jz_frame[:, 56:59] = _AXES[2] * px_per_cm * depth_w
            jz_frame -= jz_frame.mean(0)
            j_frame = np.concatenate([j_frame, jz_frame])
            if want_shared:
                jz_shared = np.zeros((m, k + 1))  # the focal column stays 0: px_per_cm is fixed in a step
                if k:
                    jz_shared[:, :k] = dz_shape @ self._identity_by_point
                jz_shared -= jz_shared.mean(0)
                j_shared = np.concatenate([j_shared, jz_shared])
        return residual, uv, j_frame, j_shared

    def _prior_cost(self, frames: list[_Frame], shared: np.ndarray, focal_prior: float) -> float:
        cfg = self.config
        k = self.num_identity
        cost = cfg.identity_prior * float(shared[:k] @ shared[:k])
        cost += cfg.focal_prior * (shared[k] - math.log(focal_prior)) ** 2
        for f in frames:
            w = f.params[:NUM_EXPRESSIONS]
            cost += cfg.expression_prior * float(w @ w) + cfg.expression_sparsity * float(w.sum())
            cost += cfg.antagonist_penalty * float(((w[_ANT_A] * w[_ANT_B]) ** 2).sum())
        return cost

    def _cost(self, frames, shared, size, focal_prior) -> float:
        data = sum(float(r @ r) for r in (self._residuals(f, shared, size, False)[0] for f in frames))
        return data + self._prior_cost(frames, shared, focal_prior)

    def _solve(
        self,
        frames: list[_Frame],
        shared: np.ndarray,
        size: tuple[int, int],
        focal_prior: float,
        iterations: int,
        free_frame: np.ndarray,  # [59] bool: which per-frame parameters move
        free_shared: np.ndarray,  # [K+1] bool
    ) -> np.ndarray:
        """Levenberg–Marquardt over all frames jointly (block normal equations); updates frames in place."""
        cfg = self.config
        k = self.num_identity
        nf, ns = NUM_EXPRESSIONS + 6, k + 1
        n_total = len(frames) * nf + ns
        shared_moves = bool(free_shared.any())  # tracking holds identity and focal: skip their Jacobian
        damping = 1e-3
        for _ in range(iterations):
            # The depth term's pixels-per-cm follows the current focal length and distance; it is held
            # fixed within an iteration so that the cost being compared is exact.
            for f in frames:
                depth = world_to_camera(self.points_from_params(f.params, shared))[:, 2].mean()
                f.px_per_cm = math.exp(shared[k]) / max(float(depth), 1e-3)
            hess = np.zeros((n_total, n_total))
            grad = np.zeros(n_total)
            sh = slice(len(frames) * nf, n_total)
            cost = self._prior_cost(frames, shared, focal_prior)
            for i, f in enumerate(frames):
                r, _, jf, js = self._residuals(f, shared, size, True, want_shared=shared_moves)
                cost += float(r @ r)
                fs = slice(i * nf, (i + 1) * nf)
                hess[fs, fs] = jf.T @ jf
                grad[fs] = jf.T @ r
                if shared_moves:
                    hess[fs, sh] = jf.T @ js
                    hess[sh, fs] = hess[fs, sh].T
                    hess[sh, sh] += js.T @ js
                    grad[sh] += js.T @ r
                w = f.params[:NUM_EXPRESSIONS]
                idx = np.arange(i * nf, i * nf + NUM_EXPRESSIONS)
                hess[idx, idx] += cfg.expression_prior
                grad[idx] += cfg.expression_prior * w + 0.5 * cfg.expression_sparsity
                # Antagonist residuals √γ·w_a·w_b (Gauss–Newton: J = √γ·(w_b, w_a)).
                ga, gb = idx[_ANT_A], idx[_ANT_B]
                wa, wb = w[_ANT_A], w[_ANT_B]
                gamma = cfg.antagonist_penalty
                np.add.at(hess, (ga, ga), gamma * wb * wb)
                np.add.at(hess, (gb, gb), gamma * wa * wa)
                np.add.at(hess, (ga, gb), gamma * wa * wb)
                np.add.at(hess, (gb, ga), gamma * wa * wb)
                np.add.at(grad, ga, gamma * wa * wb * wb)
                np.add.at(grad, gb, gamma * wa * wa * wb)
            idk = np.arange(len(frames) * nf, len(frames) * nf + k)
            hess[idk, idk] += cfg.identity_prior
            grad[idk] += cfg.identity_prior * shared[:k]
            hess[n_total - 1, n_total - 1] += cfg.focal_prior
            grad[n_total - 1] += cfg.focal_prior * (shared[k] - math.log(focal_prior))
            # Active set: expression weights at a bound whose gradient pushes outwards stay put.
            free = np.concatenate([np.tile(free_frame, len(frames)), free_shared])
            for i, f in enumerate(frames):
                w = f.params[:NUM_EXPRESSIONS]
                g = grad[i * nf : i * nf + NUM_EXPRESSIONS]
                blocked = ((w <= 0) & (g > 0)) | ((w >= 1) & (g < 0))
                free[i * nf : i * nf + NUM_EXPRESSIONS] &= ~blocked
            # Bounds of every parameter: expression weights in [0, 1], the rest unbounded.
            current = np.concatenate([*(f.params for f in frames), shared])
            lower = np.full(n_total, -np.inf)
            upper = np.full(n_total, np.inf)
            for i in range(len(frames)):
                lower[i * nf : i * nf + NUM_EXPRESSIONS] = 0.0
                upper[i * nf : i * nf + NUM_EXPRESSIONS] = 1.0
            diag = np.diag(hess).copy()
            improved = False
            for _attempt in range(6):
                damped = hess + damping * np.diag(diag + 1e-6)
                full = self._bounded_step(damped, grad, free, current, lower, upper)
                old = [f.params.copy() for f in frames], shared.copy()
                for i, f in enumerate(frames):
                    f.params = f.params + full[i * nf : (i + 1) * nf]
                    f.params[:NUM_EXPRESSIONS] = np.clip(f.params[:NUM_EXPRESSIONS], 0.0, 1.0)
                shared = shared + full[sh]
                new_cost = self._cost(frames, shared, size, focal_prior)
                if new_cost < cost:
                    improved = cost - new_cost > 1e-6 * cost
                    cost = new_cost
                    damping = max(damping / 3, 1e-7)
                    break
                for f, p in zip(frames, old[0]):
                    f.params = p
                shared = old[1]
                damping *= 10
            if not improved:
                break
        return shared

    @staticmethod
    def _bounded_step(hess, grad, free, current, lower, upper) -> np.ndarray:
        """Newton step of the quadratic model within box bounds (active set: clamp violators, re-solve)."""
        step = np.zeros(len(grad))
        free = free.copy()
        for _ in range(8):
            idx = np.nonzero(free)[0]
            fixed = np.nonzero(~free)[0]
            rhs = -grad[idx] - hess[np.ix_(idx, fixed)] @ step[fixed]
            step[idx] = np.linalg.solve(hess[np.ix_(idx, idx)], rhs)
            target = current[idx] + step[idx]
            low, high = target < lower[idx], target > upper[idx]
            if not (low.any() or high.any()):
                break
            step[idx[low]] = lower[idx[low]] - current[idx[low]]
            step[idx[high]] = upper[idx[high]] - current[idx[high]]
            free[idx[low | high]] = False
        return step

    # --------------------------------------------------------------------------------------------
    def _initial_pose(self, frame: _Frame, focal: float, size) -> None:
        """Pose from PnP on the mean face (OpenCV SQPnP), turned into head-model angles and translation."""
        import cv2

        camera = Camera.photo(focal, *size)
        model = self.neutral
        ok, rvec, tvec = cv2.solvePnP(
            model.astype(np.float64),
            frame.uv.astype(np.float64),
            camera.intrinsics(OPENCV_PIXEL_CENTRE),
            None,
            flags=cv2.SOLVEPNP_SQPNP,
        )
        flip = _AXES  # the photo camera sits at the world origin: camera = flip · world
        if ok and tvec[2, 0] > 0:
            rc, _ = cv2.Rodrigues(rvec)
            rot = flip @ rc  # camera = flip · world and camera = Rc · model + tc
            trans = flip @ tvec[:, 0] + rot @ self.pivot - self.pivot
            angles = matrix_to_euler(torch.from_numpy(rot)).numpy()
        else:  # fall back to a frontal head at the distance the eye span implies
            eye_cm = float(np.linalg.norm(model[self._eye_rows[0]] - model[self._eye_rows[1]]))
            depth = focal * eye_cm / frame.scale
            centre = (frame.uv.mean(0) - camera.principal_point(OPENCV_PIXEL_CENTRE)) * depth / focal
            angles = np.zeros(3)
            trans = flip.T @ np.array([centre[0], centre[1], depth]) - self.neutral.mean(0)
        frame.params = np.concatenate([np.zeros(NUM_EXPRESSIONS), angles, trans])

    def fit_frames(
        self,
        landmarks: list[np.ndarray],  # F × [468, 3] (or [468, 2]) pixels
        image_size: tuple[int, int],  # (width, height)
        focal_px: float | None = None,
        fit_focal: bool = True,
    ) -> list[FaceFit]:
        """One identity and focal length shared by several images of a face, with per-image pose and expression."""
        if not landmarks:
            raise HeadsplatError("no landmarks to fit")
        size = (int(image_size[0]), int(image_size[1]))
        prior = float(focal_px) if focal_px else default_focal(*size)
        with _single_threaded_blas():
            return self._fit_frames(landmarks, size, prior, fit_focal)

    def _fit_frames(self, landmarks, size, prior, fit_focal) -> list[FaceFit]:
        frames = [self._observe(lm) for lm in landmarks]
        k = self.num_identity
        shared = np.zeros(k + 1)
        shared[k] = math.log(prior)
        for f in frames:
            self._initial_pose(f, prior, size)
        pose_only = np.zeros(NUM_EXPRESSIONS + 6, bool)
        pose_only[53:] = True
        no_shared = np.zeros(k + 1, bool)
        shared = self._solve(frames, shared, size, prior, 8, pose_only, no_shared)
        all_shared = np.ones(k + 1, bool)
        all_shared[k] = fit_focal
        shared = self._solve(frames, shared, size, prior, self.config.iterations, self.frame_free, all_shared)
        return [self._result(f, shared, size) for f in frames]

    def fit_image(
        self,
        landmarks: np.ndarray,
        image_size: tuple[int, int],
        focal_px: float | None = None,
        fit_focal: bool = True,
    ) -> FaceFit:
        """Identity, expression, pose and focal length from one image's landmarks [468, 3] (pixels)."""
        return self.fit_frames([landmarks], image_size, focal_px, fit_focal)[0]

    def track(self, landmarks: np.ndarray, previous: FaceFit, iterations: int | None = None) -> FaceFit:
        """Expression and pose of a new frame, warm-started from `previous` with its identity and focal fixed."""
        with _single_threaded_blas():
            return self._track(landmarks, previous, iterations)

    def _track(self, landmarks, previous: FaceFit, iterations) -> FaceFit:
        frame = self._observe(landmarks)
        frame.params = np.concatenate([previous.expression, previous.rotation, previous.translation]).astype(
            np.float64
        )
        shared = np.concatenate(
            [np.asarray(previous.identity, np.float64)[: self.num_identity], [math.log(previous.focal_px)]]
        )
        if len(shared) < self.num_identity + 1:  # an identity with fewer modes than the fitter uses
            shared = np.concatenate([shared[:-1], np.zeros(self.num_identity + 1 - len(shared)), shared[-1:]])
        shared = self._solve(
            [frame],
            shared,
            previous.image_size,
            previous.focal_px,
            iterations or self.config.tracking_iterations,
            self.frame_free,
            np.zeros(self.num_identity + 1, bool),
        )
        return self._result(frame, shared, previous.image_size)

    def start_track(self, identity: Identity, landmarks: np.ndarray, image_size: tuple[int, int]) -> FaceFit:
        """First frame of a video with a known identity (and its focal length, or the default): pose + expression."""
        size = (int(image_size[0]), int(image_size[1]))
        focal = identity.focal_px if identity.focal_px > 0 else default_focal(*size)
        frame = self._observe(landmarks)
        coeffs = np.zeros(self.num_identity)
        n = min(self.num_identity, len(identity.coefficients))
        coeffs[:n] = identity.coefficients[:n]
        shared = np.concatenate([coeffs, [math.log(focal)]])
        self._initial_pose(frame, focal, size)
        with _single_threaded_blas():
            shared = self._solve(
                [frame],
                shared,
                size,
                focal,
                self.config.iterations,
                self.frame_free,
                np.zeros(len(shared), bool),
            )
        return self._result(frame, shared, size)

    def _result(self, frame: _Frame, shared: np.ndarray, size) -> FaceFit:
        fit = self._plain_result(frame, shared, size)
        return fit if frame.iris is None else self.fit_gaze(fit, frame.iris)

    def _plain_result(self, frame: _Frame, shared: np.ndarray, size) -> FaceFit:
        k = self.num_identity
        _, uv = self._residuals(frame, shared, size, False)
        error = float(np.linalg.norm(uv - frame.uv, axis=1).mean())
        return FaceFit(
            identity=shared[:k].astype(np.float32),
            expression=frame.params[:NUM_EXPRESSIONS].astype(np.float32),
            rotation=frame.params[53:56].astype(np.float32),
            translation=frame.params[56:59].astype(np.float32),
            focal_px=float(math.exp(shared[k])),
            image_size=(int(size[0]), int(size[1])),
            error_px=error,
            inter_ocular_px=frame.scale,
        )


__all__ = [
    "CORRESPONDENCE",
    "Camera",
    "FaceFit",
    "FaceFitter",
    "FitConfig",
    "LANDMARK_SCHEMES",
    "OneEuroFilter",
    "compose_pose",
    "default_focal",
    "expression_value",
    "project",
    "relative_pose",
    "smooth_landmarks",
    "world_to_camera",
]
