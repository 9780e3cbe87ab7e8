"""composite_over and paste_back: the crop lands where asked, edges fade, types are kept."""

import numpy as np
import pytest
import torch

from renderers import composite_over, paste_back


def test_composite_over_works_for_torch_and_numpy():
    rgb = torch.tensor([[[0.4, 0.2, 0.0], [0.0, 0.0, 0.0]]])  # premultiplied
    alpha = torch.tensor([[0.5, 0.0]])
    out = composite_over(rgb, alpha, (1.0, 1.0, 1.0))
    torch.testing.assert_close(out, torch.tensor([[[0.9, 0.7, 0.5], [1.0, 1.0, 1.0]]]))
    image_bg = np.full((1, 2, 3), 0.2, np.float32)
    out_np = composite_over(rgb.numpy(), alpha.numpy(), image_bg)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, [[[0.5, 0.3, 0.1], [0.2, 0.2, 0.2]]], rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        composite_over(rgb, alpha[:, :1], (1.0, 1.0, 1.0))


def frame_and_crop():
    frame = np.zeros((60, 80, 3), np.uint8)
    frame[..., 2] = 200  # blue frame
    crop = np.zeros((20, 30, 3), np.float32)
    crop[..., 0] = 250  # red crop
    return frame, crop


def test_paste_back_with_a_box_and_no_feather_replaces_exactly_the_box():
    frame, crop = frame_and_crop()
    out = paste_back(crop, np.ones((20, 30), np.float32), frame, (10, 5, 40, 25), feather_px=0)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    assert (out[5:25, 10:40] == [250, 0, 0]).all()
    outside = np.ones((60, 80), bool)
    outside[5:25, 10:40] = False
    assert (out[outside] == [0, 0, 200]).all()


def test_paste_back_feathers_the_edge_inside_the_mask():
    frame, crop = frame_and_crop()
    out = paste_back(crop, np.ones((20, 30), np.float32), frame, (10, 5, 40, 25), feather_px=8)
    red = out[15, :, 0].astype(int)  # a row through the middle of the box
    assert red[25] == 250  # centre: all crop
    assert red[9] == 0 and red[41] == 0  # outside the box: all frame
    assert 0 < red[11] < red[13] < red[17] <= 250  # a ramp inside the box edge, rising inwards
    assert (np.diff(red[10:26]) >= 0).all()


def test_paste_back_with_an_affine_matches_the_equivalent_box_and_keeps_torch_types():
    frame, crop = frame_and_crop()
    mask = np.ones((20, 30), np.float32)
    mask[:, :5] = 0  # only part of the crop is pasted
    by_box = paste_back(crop, mask, frame, (10, 5, 70, 45), feather_px=4)  # 2x upscale
    affine = np.array([[2.0, 0.0, 10.5], [0.0, 2.0, 5.5]])  # centre (0, 0) -> (10.5, 5.5)
    by_affine = paste_back(torch.from_numpy(crop), torch.from_numpy(mask), torch.from_numpy(frame), affine, 4)
    assert isinstance(by_affine, torch.Tensor) and by_affine.dtype == torch.uint8
    np.testing.assert_array_equal(by_affine.numpy(), by_box)
    assert (by_box[25, 15] == [0, 0, 200]).all()  # masked-out part of the crop shows the frame
    assert (by_box[25, 50] == [250, 0, 0]).all()


def test_paste_back_float_frames_and_bad_arguments():
    frame = np.zeros((10, 10, 3), np.float32)
    out = paste_back(np.ones((4, 4, 3), np.float32), np.ones((4, 4)), frame, (2, 2, 6, 6), feather_px=0)
    assert out.dtype == np.float32 and out[3, 3, 0] == 1.0 and out[0, 0, 0] == 0.0
    with pytest.raises(ValueError, match="box"):
        paste_back(np.ones((4, 4, 3)), np.ones((4, 4)), frame, (6, 6, 2, 2))
    with pytest.raises(ValueError, match="crop_mask"):
        paste_back(np.ones((4, 4, 3)), np.ones((3, 4)), frame, (2, 2, 6, 6))
    with pytest.raises(ValueError, match="affine"):
        paste_back(np.ones((4, 4, 3)), np.ones((4, 4)), frame, np.eye(3))
    with pytest.raises(ValueError, match="feather"):
        paste_back(np.ones((4, 4, 3)), np.ones((4, 4)), frame, (2, 2, 6, 6), feather_px=-1)


def test_paste_back_with_a_precomputed_weight_equals_the_full_call():
    from renderers import paste_weight

    rng = np.random.default_rng(5)
    crop = rng.uniform(0, 255, (40, 40, 3)).astype(np.float32)
    mask = np.zeros((40, 40), np.float32)
    mask[8:32, 10:30] = 1
    frame = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    box = (20.0, 15.0, 80.0, 75.0)
    weight = paste_weight(mask, (120, 90), box, feather_px=6)
    assert np.array_equal(
        paste_back(crop, mask, frame, box, 6), paste_back(crop, mask, frame, box, 6, weight=weight)
    )


def test_frame_paster_matches_composite_then_paste_back():
    from renderers.compositing import FramePaster, composite_over, paste_weight

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    rgb = rng.random((40, 40, 3), dtype=np.float32) * 0.9
    alpha = rng.random((40, 40), dtype=np.float32)
    background = rng.random((40, 40, 3), dtype=np.float32)
    rgb[:5] = 2.0  # out-of-range colours are clipped like composite_over + clip
    mask = np.zeros((40, 40), np.float32)
    mask[5:35, 8:30] = 1.0
    box = (7.3, 11.6, 61.9, 66.2)
    weight = paste_weight(mask, (70, 90), box, 6.0)
    paster = FramePaster(photo, (40, 40), box, weight)
    fast = paster(rgb, alpha, background)
    expected = paste_back(
        np.clip(composite_over(rgb, alpha, background), 0, 1) * 255, mask, photo, box, 6.0, weight=weight
    )
    assert fast.dtype == np.uint8 and fast.shape == photo.shape
    assert np.abs(fast.astype(int) - expected.astype(int)).max() <= 1
    untouched = weight[..., 0] == 0
    np.testing.assert_array_equal(fast[untouched], photo[untouched])
    assert paster(rgb, alpha, background) is not fast  # a new frame each call
    with pytest.raises(ValueError, match="must be"):
        paster(rgb[:20], alpha, background)
    with pytest.raises(ValueError, match="uint8"):
        FramePaster(photo.astype(np.float32), (40, 40), box, weight)
