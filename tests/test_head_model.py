"""ICT-FaceKit head model: exact neutral, working blendshapes, sane identities, normals and regions."""

from pathlib import Path

import numpy as np
import pytest
import torch

from models.head_model import VERTEX_REGIONS, HeadModel
from models.latent import EXPRESSION_INDEX, NUM_EXPRESSIONS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ict-facekit" / "ict_facekit_light.npz"


@pytest.fixture(scope="module")
def head():
    return HeadModel(num_identity=50)


def _neutral(head, batch=1):
    return head.vertices(torch.zeros(batch, 50), torch.zeros(batch, NUM_EXPRESSIONS))


@pytest.mark.skipif(not SHARED.exists(), reason="the shared ICT-FaceKit data is not beside the repo")
def test_shipped_head_matches_the_original_ict_data_within_a_hundredth_of_a_cm(head):
    ref = np.load(SHARED)
    v = head.num_vertices
    assert np.abs(_neutral(head)[0].numpy() - ref["neutral"][:v]).max() < 0.01
    # Quantised bases: the worst vertex of a ±3 identity and of a full expression stays within 0.01 cm.
    coeffs = np.zeros(50, np.float32)
    coeffs[:10] = 3.0
    coeffs[10:20] = -3.0
    mesh = head.vertices(torch.from_numpy(coeffs)[None], torch.ones(1, NUM_EXPRESSIONS) * 0.5)[0].numpy()
    expected = ref["neutral"][:v] + np.tensordot(coeffs, ref["identity_deltas"][:50, :v], 1)
    expected += np.tensordot(np.full(NUM_EXPRESSIONS, 0.5, np.float32), ref["expression_deltas"][:, :v], 1)
    assert np.abs(mesh - expected).max() < 0.01


def test_shipped_head_matches_ict_reference_samples_on_any_clone(head):
    """The original ICT values at 96 vertices (assets/ict/reference_samples.npz, written by build.py)."""
    ref = np.load(Path(__file__).resolve().parents[1] / "assets" / "ict" / "reference_samples.npz")
    at = torch.from_numpy(ref["vertices"].astype(np.int64))
    assert np.abs(_neutral(head)[0, at].numpy() - ref["neutral"]).max() < 0.01
    coeffs = np.zeros(50, np.float32)
    coeffs[:10], coeffs[10:20] = 3.0, -3.0
    weights = np.linspace(0.0, 1.0, NUM_EXPRESSIONS, dtype=np.float32)
    mesh = head.vertices(torch.from_numpy(coeffs)[None], torch.from_numpy(weights)[None])[0, at].numpy()
    expected = ref["neutral"] + np.tensordot(coeffs, ref["identity_deltas"], 1)
    expected += np.tensordot(weights, ref["expression_deltas"], 1)
    assert np.abs(mesh - expected).max() < 0.01


def test_jaw_open_lowers_the_chin_by_more_than_a_cm(head):
    expression = torch.zeros(1, NUM_EXPRESSIONS)
    expression[0, EXPRESSION_INDEX["jawOpen"]] = 1.0
    chin = int(head.landmarks68[8])
    drop = _neutral(head)[0, chin, 1] - head.vertices(torch.zeros(1, 50), expression)[0, chin, 1]
    assert drop > 1.0


def test_blink_closes_the_upper_eyelid_onto_the_lower(head):
    expression = torch.zeros(1, NUM_EXPRESSIONS)
    expression[0, EXPRESSION_INDEX["eyeBlink_L"]] = 1.0
    expression[0, EXPRESSION_INDEX["eyeBlink_R"]] = 1.0
    # Multi-PIE 68: upper lids 37/38 and 43/44, lower lids 41/40 and 47/46.
    pairs = [(37, 41), (38, 40), (43, 47), (44, 46)]
    for verts, closed in ((_neutral(head), False), (head.vertices(torch.zeros(1, 50), expression), True)):
        lm = head.landmarks(verts)[0]
        gaps = [float(lm[u, 1] - lm[d, 1]) for u, d in pairs]
        assert all(g < 0.15 for g in gaps) if closed else all(g > 0.5 for g in gaps)


@pytest.mark.parametrize("sign", [3.0, -3.0])
def test_extreme_identities_give_plausible_meshes_without_flipped_face_triangles(head, sign):
    rest = _neutral(head)
    face = head.region_triangles("face")
    tri = head.triangles[face]
    v0 = rest[0]
    area = torch.linalg.cross(v0[tri[:, 1]] - v0[tri[:, 0]], v0[tri[:, 2]] - v0[tri[:, 0]], dim=-1).norm(
        dim=-1
    )
    # ICT folds a few slivers (1% of the median area) into the tear ducts and lip corners; they are
    # ill-defined in the scan data itself, so only real surface triangles are checked.
    surface = area > 0.05 * area.median()
    rest_normals = head.triangle_normals(rest)[0, face][surface]
    extent = v0.max(0).values - v0.min(0).values
    for k in range(50):
        coeffs = torch.zeros(1, 50)
        coeffs[0, k] = sign
        mesh = head.vertices(coeffs, torch.zeros(1, NUM_EXPRESSIONS))
        normals = head.triangle_normals(mesh)[0, face][surface]
        assert (normals * rest_normals).sum(-1).min() > 0, (
            f"identity mode {k} at {sign} flips a face triangle"
        )
        size = mesh[0].max(0).values - mesh[0].min(0).values
        assert torch.all((size / extent - 1).abs() < 0.3), f"identity mode {k} at {sign} distorts the head"


def test_pose_rotates_rigidly_about_the_pivot_and_translates(head):
    rest = _neutral(head)
    yaw = torch.tensor([[0.0, 0.5, 0.0]])
    moved = head.vertices(
        torch.zeros(1, 50), torch.zeros(1, NUM_EXPRESSIONS), yaw, torch.tensor([[1.0, 2.0, 3.0]])
    )
    # Rigid: pairwise distances are kept.
    idx = torch.randint(0, head.num_vertices, (200,), generator=torch.Generator().manual_seed(0))
    d0 = (rest[0, idx, None] - rest[0, None, idx]).norm(dim=-1)
    d1 = (moved[0, idx, None] - moved[0, None, idx]).norm(dim=-1)
    assert torch.allclose(d0, d1, atol=1e-4)
    # Positive yaw turns the nose towards +x (the subject's left).
    nose = int(head.landmarks68[30])
    assert moved[0, nose, 0] - 1.0 > rest[0, nose, 0] + 3.0


def test_normals_face_outwards_and_regions_cover_their_parts(head):
    verts = _neutral(head)
    normals = head.vertex_normals(verts)[0]
    nose = int(head.landmarks68[30])
    assert normals[nose, 2] > 0.9
    assert torch.allclose(normals.norm(dim=-1), torch.ones(head.num_vertices), atol=1e-4)
    left_eye = verts[0, head.region_vertices("eyeball_left")].mean(0)
    right_eye = verts[0, head.region_vertices("eyeball_right")].mean(0)
    assert left_eye[0] > 2.5 and right_eye[0] < -2.5
    assert VERTEX_REGIONS["eyeball_right"][1] == head.num_vertices
    for name in ("face", "teeth", "gums_and_tongue", "mouth_socket"):
        assert len(head.region_triangles(name)) > 0


def test_batched_evaluation_matches_one_frame_at_a_time(head):
    gen = torch.Generator().manual_seed(1)
    identity = torch.randn(1, 50, generator=gen)
    expression = torch.rand(4, NUM_EXPRESSIONS, generator=gen)
    rotation = torch.randn(4, 3, generator=gen) * 0.2
    translation = torch.randn(4, 3, generator=gen)
    batch = head.vertices(identity, expression, rotation, translation)
    for i in range(4):
        one = head.vertices(identity, expression[i : i + 1], rotation[i : i + 1], translation[i : i + 1])
        assert torch.allclose(batch[i], one[0], atol=1e-4)
    assert head.landmarks(batch).shape == (4, 68, 3)


@pytest.mark.cuda
def test_head_model_runs_on_cuda_like_on_cpu(head):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpu = HeadModel(num_identity=50).cuda()
    identity, expression = torch.randn(1, 50), torch.rand(3, NUM_EXPRESSIONS)
    cpu_mesh = head.vertices(identity, expression, torch.ones(3, 3) * 0.1, torch.ones(3, 3))
    gpu_mesh = gpu.vertices(
        identity.cuda(), expression.cuda(), torch.ones(3, 3).cuda() * 0.1, torch.ones(3, 3).cuda()
    )
    assert torch.allclose(cpu_mesh, gpu_mesh.cpu(), atol=1e-3)


def test_a_head_model_without_identity_modes_gives_the_mean_head():
    mean_head = HeadModel(num_identity=0)
    mesh = mean_head.vertices(torch.zeros(1, 0), torch.zeros(1, NUM_EXPRESSIONS))
    assert torch.equal(mesh[0], mean_head.neutral)
