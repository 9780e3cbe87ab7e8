"""The mesh z-buffer: numba kernel against its numpy twin, depth order and barycentrics."""

import numpy as np

from renderers.mesh_raster import _rasterize_mesh_numpy, rasterize_mesh


def _random_mesh(seed, n=40, w=48, h=40):
    rng = np.random.default_rng(seed)
    centres = rng.uniform([-10, -10, 1], [w + 10, h + 10, 20], (n, 3))
    points = (centres[:, None, :] + rng.normal(0, [8, 8, 1], (n, 3, 3))).reshape(-1, 3)
    points[:, 2] = np.abs(points[:, 2]) + 0.5
    points[rng.random(len(points)) < 0.05, 2] = -1.0  # a few corners behind the camera
    return points, np.arange(3 * n).reshape(n, 3), w, h


def test_numba_kernel_matches_the_numpy_twin_on_random_overlapping_triangles():
    for seed in range(5):
        points, triangles, w, h = _random_mesh(seed)
        fast = rasterize_mesh(points, triangles, w, h)
        slow = _rasterize_mesh_numpy(points, triangles, w, h)
        assert (fast.triangle >= 0).sum() > 100
        same = fast.triangle == slow.triangle
        # Pixels exactly on a shared edge may go either way; they must be a tiny minority.
        assert same.mean() > 0.995
        np.testing.assert_allclose(fast.depth[same], slow.depth[same], rtol=1e-5)
        np.testing.assert_allclose(fast.barycentric[same], slow.barycentric[same], atol=1e-4)


def test_nearer_triangle_wins_and_barycentrics_reproduce_the_pixel():
    points = np.array([[0, 0, 5], [20, 0, 5], [0, 20, 5], [0, 0, 2], [20, 0, 2], [0, 20, 2.0]])
    frags = rasterize_mesh(points, np.array([[0, 1, 2], [3, 4, 5]]), 20, 20)
    assert frags.triangle[2, 2] == 1 and frags.depth[2, 2] == np.float32(2.0)
    assert frags.triangle[19, 19] == -1 and np.isinf(frags.depth[19, 19])
    # Constant depth: barycentrics are affine, so they rebuild the pixel centre.
    rebuilt = frags.barycentric[3, 7] @ points[3:6, :2]
    np.testing.assert_allclose(rebuilt, [7.5, 3.5], atol=1e-4)


def test_back_faces_are_culled_when_asked():
    # In image coordinates (y down) these corners run anticlockwise on screen: a front face, whose
    # signed image area is negative. The same corners in the other order are its back face.
    front = np.array([[0, 0, 5], [0, 20, 5], [20, 0, 5.0]])
    back = front[[0, 2, 1]]
    tri = np.array([[0, 1, 2]])
    drawn = rasterize_mesh(front, tri, 20, 20).triangle >= 0
    assert drawn.sum() > 150  # half of the 20 x 20 image
    np.testing.assert_array_equal(rasterize_mesh(front, tri, 20, 20, cull_back=True).triangle >= 0, drawn)
    np.testing.assert_array_equal(rasterize_mesh(back, tri, 20, 20).triangle >= 0, drawn)
    assert not (rasterize_mesh(back, tri, 20, 20, cull_back=True).triangle >= 0).any()
