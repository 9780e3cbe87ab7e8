"""The one camera and projection: where projected points are drawn, OpenCV's pixels, crops, derivatives."""

import numpy as np
import pytest
import torch

from renderers import Camera, Gaussians, rasterize
from renderers.camera import OPENCV_PIXEL_CENTRE, project_points, projection_jacobian
from renderers.rasterize import _project_reference


def test_projected_points_land_where_the_renderer_draws_them():
    cam = Camera.photo(300.0, 65, 49)  # a portrait's camera, as the face fitter sees the photo
    point = torch.tensor([[1.3, -0.7, -40.0]])  # in front of it, off the axis
    u, v, depth = cam.project(point)[0]
    assert depth == pytest.approx(40.0)
    g = Gaussians(
        point, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.25), torch.ones(1), torch.ones(1, 3)
    )
    torch.testing.assert_close(_project_reference(g, cam).means2d[0], torch.stack([u, v]))
    alpha = rasterize(g, cam, backend="cpu").alpha
    rows, cols = torch.meshgrid(torch.arange(49.0), torch.arange(65.0), indexing="ij")
    # Pixel (j, i) has its centre at (j + 0.5, i + 0.5): the blob's centre is the projected point.
    assert float((alpha * (cols + 0.5)).sum() / alpha.sum()) == pytest.approx(float(u), abs=0.02)
    assert float((alpha * (rows + 0.5)).sum() / alpha.sum()) == pytest.approx(float(v), abs=0.02)
    # In OpenCV's pixels (landmarks, cv2, array indices) the same point is half a pixel less.
    opencv = cam.project(point.double().numpy(), OPENCV_PIXEL_CENTRE)[0]
    np.testing.assert_allclose(opencv, [float(u) - 0.5, float(v) - 0.5, 40.0], atol=1e-4)
    assert cam.principal_point(OPENCV_PIXEL_CENTRE) == (32.0, 24.0)  # the centre pixel of a 65 × 49 image


def test_a_cropped_camera_sees_the_crop_of_the_image():
    cam = Camera.photo(800.0, 640, 480)
    box = (200.0, 100.0, 456.0, 356.0)
    crop = cam.cropped(box, 128)
    points = torch.tensor([[2.0, 3.0, -50.0], [-4.0, -1.0, -45.0]])
    expected = (cam.project(points)[:, :2] - torch.tensor(box[:2])) * (128 / 256)
    torch.testing.assert_close(crop.project(points)[:, :2], expected)
    assert (crop.width, crop.height) == (128, 128)


def test_projection_is_differentiable_in_the_focal_length_and_its_jacobian_matches_autograd():
    rng = np.random.default_rng(1)
    points = rng.normal(0.0, 5.0, (6, 3))
    view = Camera.look_at((10.0, 5.0, 40.0)).world_to_camera.double()  # a turned camera, not just a flip
    fx, fy, cx, cy = 900.0, 990.0, 320.0, 240.0
    pts = torch.from_numpy(points)
    autograd = torch.autograd.functional.jacobian(
        lambda p: project_points(p, fx, fy, cx, cy, view)[:, :2], pts
    )
    # [6, 2, 3]: each pixel moves only with its own point.
    per_point = autograd[torch.arange(6), :, torch.arange(6)]
    np.testing.assert_allclose(
        projection_jacobian(points, fx, fy, view.numpy()), per_point.numpy(), atol=1e-12
    )
    focal = torch.tensor(fx, dtype=torch.float64, requires_grad=True)
    uv = project_points(pts, focal, fy, cx, cy, view)
    uv[:, 0].sum().backward()
    assert focal.grad.item() == pytest.approx(float(((uv[:, 0].detach() - cx) / fx).sum()), rel=1e-12)
    np.testing.assert_allclose(project_points(points, fx, fy, cx, cy, view.numpy()), uv.detach().numpy())
