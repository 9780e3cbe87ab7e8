"""The project's image loader and video reader/writer: every common kind of file, and clear errors."""

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from models.errors import HeadsplatError
from pipelines.image_io import load_image, save_image, to_rgb_uint8
from pipelines.video_io import VideoWriter, read_video

GRACE = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def rgb():
    return np.asarray(Image.open(GRACE).convert("RGB"))


def test_rgb_jpeg_loads_unchanged(rgb):
    image = load_image(GRACE)
    assert image.dtype == np.uint8 and image.shape == (600, 512, 3)
    np.testing.assert_array_equal(image, rgb)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_every_pixel_mode_becomes_rgb(tmp_path, rgb, mode):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    pil = Image.fromarray(rgb)
    if mode == "I;16":
        pil = Image.fromarray(np.asarray(pil.convert("L")).astype(np.uint16) * 257)
    elif mode == "P":
        pil = pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        pil = pil.convert(mode)
    pil.save(path)
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (600, 512, 3)
    grey = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    if mode in ("L", "LA", "I;16"):
        assert np.abs(image[:, :, 0].astype(int) - grey).max() <= 1
    elif mode in ("RGBA", "CMYK"):
        assert np.abs(image.astype(int) - rgb).mean() < 3
    elif mode == "P":
        assert np.abs(image.astype(int) - rgb).mean() < 12  # 256-colour palette


def test_transparent_pixels_are_composited_on_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert tuple(image[0, 0]) == (255, 0, 0) and tuple(image[0, 9]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path, rgb):
    pil = Image.fromarray(rgb)
    exif = pil.getexif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    pil.save(tmp_path / "r.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "r.jpg")
    assert image.shape == (512, 600, 3)
    expected = np.rot90(rgb, k=-1)
    assert np.abs(image.astype(int) - expected).mean() < 4


def test_sixteen_bit_colour_and_float_arrays_convert():
    wide = (np.arange(12, dtype=np.uint16).reshape(2, 2, 3) * 5000).astype(np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(wide), (wide / 65535 * 255 + 0.5).astype(np.uint8))
    floats = np.full((3, 3), 0.5, np.float32)
    assert to_rgb_uint8(floats).shape == (3, 3, 3) and to_rgb_uint8(floats)[0, 0, 0] == 128
    with pytest.raises(HeadsplatError):
        to_rgb_uint8(np.zeros((4, 4, 5)))


def test_truncated_and_non_image_files_are_clear_errors(tmp_path):
    whole = open(GRACE, "rb").read()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(HeadsplatError, match="damaged or truncated"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(HeadsplatError, match="not an image"):
        load_image(tmp_path / "text.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(HeadsplatError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(HeadsplatError, match="not found"):
        load_image(tmp_path / "missing.jpg")


def test_huge_images_are_refused_before_decoding(tmp_path, monkeypatch):
    import pipelines.image_io as image_io

    Image.new("RGB", (400, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(image_io, "MAX_PIXELS", 100_000)
    with pytest.raises(HeadsplatError, match="downscale"):
        load_image(tmp_path / "big.png")


def test_save_image_is_atomic_and_checks_the_suffix(tmp_path, rgb):
    path = save_image(rgb, tmp_path / "out.jpg")
    assert load_image(path).shape == rgb.shape
    assert [p.name for p in tmp_path.iterdir()] == ["out.jpg"]
    with pytest.raises(HeadsplatError):
        save_image(rgb, tmp_path / "out.xyz")


def test_video_round_trip_keeps_frames_fps_and_odd_sizes(tmp_path):
    frames = [np.full((51, 67, 3), 20 * k, np.uint8) for k in range(8)]
    with VideoWriter(tmp_path / "v.mp4", 12.0) as out:
        for frame in frames:
            out.write(frame)
    video = read_video(tmp_path / "v.mp4")
    assert video.fps == pytest.approx(12.0) and video.size == (68, 52)  # padded to even sizes for yuv420p
    decoded = list(video)
    assert len(decoded) == 8
    assert all(abs(float(d[:51, :67].mean()) - 20 * k) < 3 for k, d in enumerate(decoded))


def test_video_writer_leaves_nothing_behind_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "v.mp4", 25.0) as out:
            out.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("crash mid-way")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HeadsplatError, match="frame 1"):
        with VideoWriter(tmp_path / "w.mp4", 25.0) as out:
            out.write(np.zeros((32, 32, 3), np.uint8))
            out.write(np.zeros((16, 16, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_video_writer_muxes_audio(tmp_path):
    import wave

    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(16000) * 0.1) * 8000).astype(np.int16).tobytes())
    with VideoWriter(tmp_path / "v.mp4", 10.0, audio=tmp_path / "a.wav") as out:
        for _ in range(10):
            out.write(np.zeros((32, 32, 3), np.uint8))
    assert read_video(tmp_path / "v.mp4").audio


def test_unreadable_video_is_a_clear_error(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(HeadsplatError, match="cannot read video"):
        read_video(tmp_path / "bad.mp4")


def test_rotated_phone_video_is_delivered_upright(tmp_path):
    import subprocess

    import imageio_ffmpeg

    frames = [np.zeros((40, 60, 3), np.uint8) for _ in range(3)]
    for frame in frames:
        frame[:, :10] = 255  # a white band on the left edge
    with VideoWriter(tmp_path / "v.mp4", 10.0) as out:
        for frame in frames:
            out.write(frame)
    rotated = tmp_path / "r.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90",
         "-i", str(tmp_path / "v.mp4"), "-c", "copy", str(rotated)],
        check=True,
    )  # fmt: skip
    video = read_video(rotated)
    decoded = list(video)
    assert video.size == (40, 60) and decoded[0].shape == (60, 40, 3)
    # 90° counter-clockwise display rotation moves the left band to the bottom.
    assert decoded[0][-8:].mean() > 200 and decoded[0][:8].mean() < 50
