"""Hostile and broken inputs for every command-line tool; prints one JSON line.

    PYTHONPATH=. python benchmarks/hostile_inputs.py                 # every case, 2 at a time
    PYTHONPATH=. python benchmarks/hostile_inputs.py --only talk_text --jobs 1
    PYTHONPATH=. python benchmarks/hostile_inputs.py --list
    PYTHONPATH=. python benchmarks/hostile_inputs.py --json benchmarks/results/hostile_inputs.json

Each case runs one CLI (`python -m pipelines.NAME ...`) as a real subprocess in a fresh work folder of its
own (the current directory of the run), with HOME and TMPDIR pointed into that folder and HEADSPLAT_CACHE
at one cache shared by all cases (a fresh one where a case says so). Every case says what should happen:

    fail       exit 2 (a batch with failed items: 1) and a clear message: no "Traceback", the last stderr
               line starts with "error:" (argparse's "PROG: error: ..." after its usage lines also counts),
               at most one other line besides "warning: ..."/"note: ..." lines;
    ok         exit 0 and every expected output present and valid (mp4s are probed with ffprobe and decoded
               with ffmpeg; images, motions, JSON and safetensors are opened), plus a case's own check;
    any        either of the above (inputs where both a clear refusal and a good result are fine);
    interrupt  SIGINT (to the process group, like Ctrl-C) or SIGTERM (to the process, like `kill`) after a
               few seconds: exit 130 / 143 and a last line starting with "interrupted".

After the run the work folder is compared with its state before: a new file or folder that is not an
expected output of a successful case (a hidden `.talk.*.mp4`, a zero-byte output, a half-built folder), an
input that changed or vanished, anything written into HOME, anything left in TMPDIR (headsplat-* folders,
tmp* files), a hidden temporary file left in the avatar cache, or a process of the case still running
after it exited all count as "partial files".

Every case lands in exactly one class, the first that applies: setup_errors (the harness could not build
the case's inputs), timeouts, tracebacks (a "Traceback" on stderr, a death by signal, or an exit code the
case does not allow), wrong_successes (exit 0 where it should fail, or a success whose output is missing,
unplayable or wrong), wrong_failures (a clear refusal of an input that should work), partial_files,
unclear_errors (the right exit code with a message that is not one clear line), clear_errors,
ok_successes. Every problem of a failing case is listed in "failures" with the tail of its stderr.
One exception to the one-line rule: batch's manifest check may list every bad line after its "error:"
header ("line N: ...", "... and N more"), which is one report of one mistake, the manifest.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PORTRAIT = REPO / "assets" / "defaults" / "portrait.jpg"
SPEECH = REPO / "assets" / "defaults" / "speech.wav"
FAST = ["--size", "128", "--steps", "0", "--quiet"]
"""Talk flags that keep a successful case short: a 128² face crop and the rule-based teacher."""
DEFAULT_TIMEOUT = 240.0
ESPEAK_FLAGS = ["-v", "en-us", "-s", "160"]
"""The voice and speed Talk gives espeak-ng, so the literal-text checks compare like with like."""
TMPDIR_IGNORED = ("torchinductor_*",)
"""Third-party caches that may appear in TMPDIR and are not temporary files of headsplat."""


# ------------------------------------------------------------------------------------------------
# Cases
@dataclass
class Case:
    name: str
    cli: str
    """Module under pipelines/ ("guide" with args starting "search" is guide search)."""
    args: list
    """Arguments after `python -m pipelines.CLI`; "{W}" becomes the work folder, "{cache}" the cache."""
    expect: str = "fail"
    """fail, ok, any or interrupt."""
    setup: Callable[[Path, Fixtures], None] | None = None
    """Makes the case's inputs inside the work folder (under in/ by convention)."""
    outputs: tuple[str, ...] = ()
    """Files (relative to the work folder) a success must write; checked by their suffix."""
    allow: tuple[str, ...] = ()
    """Extra paths (fnmatch patterns) that may appear even when the case fails (batch's results.jsonl)."""
    check: Callable[[Path, Fixtures], str | None] | None = None
    """Extra check of a success; returns a problem or None."""
    codes: tuple[int, ...] = (2,)
    """Exit codes a refusal may use."""
    signal: int | None = None
    signal_after: float = 8.0
    signal_group: bool = True
    fresh_cache: bool = False
    """Point HEADSPLAT_CACHE at an empty cache inside the work folder instead of the shared one."""
    mount_full_disk: str | None = None
    """A folder (relative) to mount a 200 KiB tmpfs on before setup; the case is skipped if mount fails."""
    limits: dict = field(default_factory=dict)
    """{"wall_s": s, "rss_mb": mb}: bounds on time and memory that count as problems when passed."""
    measure: bool = False
    """Report the case's wall time and peak memory in the summary."""
    timeout: float = DEFAULT_TIMEOUT
    note: str = ""

    @property
    def group(self) -> str:
        if self.cli == "guide" and self.args and self.args[0] == "search":
            return "guide search"
        return self.cli


@dataclass
class Result:
    case: Case
    category: str = ""
    problems: list[str] = field(default_factory=list)
    returncode: int | None = None
    wall_s: float = 0.0
    rss_mb: float = 0.0
    stderr: str = ""
    skipped: str = ""


# ------------------------------------------------------------------------------------------------
# Small file makers
def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*args: str) -> None:
    result = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-y", "-v", "error", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {result.stderr.strip()[-300:]}")


def speech_samples(seconds: float) -> np.ndarray:
    """The shipped speech (16 kHz mono float), tiled or cut to `seconds`."""
    import soundfile

    data, rate = soundfile.read(str(SPEECH), dtype="float32", always_2d=False)
    assert rate == 16000
    n = max(1, int(round(seconds * 16000)))
    return np.tile(data, n // len(data) + 1)[:n]


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, rate, subtype=subtype, format="WAV")
    return path


def portrait_image():
    from PIL import Image

    return Image.open(PORTRAIT).convert("RGB")


def astronaut_image():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


def save_image(image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_16bit_rgb(path: Path) -> Path:
    """The portrait as a 16-bit-per-channel RGB PNG (PIL cannot write one, so by hand)."""
    rgb = np.asarray(portrait_image()).astype(np.uint16) * 257
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(raw, 6))
    return put(path, data + png_chunk(b"IEND", b""))


def png_huge_header(path: Path) -> Path:
    """A PNG made by PIL whose header claims 100000 x 100000 pixels, cut off in its pixel data."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 90, 60)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    header = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[8:33] = png_chunk(b"IHDR", header)
    return put(path, bytes(data[: max(60, len(data) // 2)]))


def jpeg_huge_header(path: Path) -> Path:
    """A JPEG whose frame header claims 65000 x 65000 pixels, cut off in its scan data."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 90, 60)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return put(path, bytes(data[: len(data) // 2]))


def junk_bytes(n: int, seed: int) -> bytes:
    """NUL-free random bytes (control characters and invalid UTF-8 included)."""
    rng = random.Random(seed)
    return bytes(rng.randrange(1, 256) for _ in range(n))


# ------------------------------------------------------------------------------------------------
# Fixtures shared by cases (built once, on first use)
class FixtureError(RuntimeError):
    pass


class Fixtures:
    def __init__(self, root: Path):
        self.root = root / "fixtures"
        self.cache = root / "cache"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._done: dict[str, Path | Exception] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> Path:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._done:
                try:
                    self._done[name] = getattr(self, "_make_" + name)()
                except Exception as err:  # noqa: BLE001 (the case reports it)
                    self._done[name] = FixtureError(f"fixture {name}: {err}")
            value = self._done[name]
        if isinstance(value, Exception):
            raise value
        return value

    def run(self, module: str, *args: str) -> None:
        env = case_env(self.root, self.cache)
        for sub in ("home", "tmp"):
            (self.root / sub).mkdir(exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", f"pipelines.{module}", *args], cwd=self.root, env=env, capture_output=True,
            text=True, timeout=DEFAULT_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise FixtureError(
                f"python -m pipelines.{module} {' '.join(args)} exited {result.returncode}: {tail}"
            )

    def speech(self, seconds: float) -> Path:
        path = self.root / f"speech_{seconds:g}s.wav"
        with self._guard:
            if not path.exists():
                write_wav(self.root / (path.name + ".part"), speech_samples(seconds))
                os.replace(self.root / (path.name + ".part"), path)
        return path

    def _make_video(self) -> Path:
        """A 2 s Talk video of the shipped portrait (also warms the shared avatar cache at --size 128)."""
        self.run("talk", "--audio", str(self.speech(2.0)), "-o", "video.mp4", *FAST)
        return self.root / "video.mp4"

    def _make_cache_seed(self) -> Path:
        """A copy of the shared cache holding the portrait's 128² avatar."""
        self.get("video")
        seed = self.root / "cache_seed"
        shutil.copytree(self.cache, seed)
        if not list(seed.rglob("*.safetensors")):
            raise FixtureError("Talk wrote no avatar into HEADSPLAT_CACHE")
        return seed

    def _make_avatar3d(self) -> Path:
        (self.root / "a3").mkdir(exist_ok=True)
        self.run("avatar3d", "-o", "a3", "--turntable-seconds", "0", "--quiet")
        return self.root / "a3" / "avatar.safetensors"

    def _make_motion(self) -> Path:
        """base.json/.npz/.csv: 1 s of motion from the shipped speech (rule-based teacher)."""
        for suffix in ("json", "npz", "csv"):
            self.run(
                "audio_to_motion", "--audio", str(self.speech(1.0)), "--out", f"base.{suffix}", "--steps", "0"
            )
        return self.root / "base.json"

    def _make_blank_video(self) -> Path:
        path = self.root / "blank.mp4"
        ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=320x240:d=1:r=25", "-pix_fmt", "yuv420p", str(path))
        return path

    def _make_audio_formats(self) -> Path:
        """speech_1s at 8/44.1/96 kHz, stereo, mp3 and ogg."""
        src = str(self.speech(1.0))
        folder = self.root / "audio"
        folder.mkdir(exist_ok=True)
        ffmpeg("-i", src, "-ar", "8000", str(folder / "8k.wav"))
        ffmpeg("-i", src, "-ar", "44100", str(folder / "44k.wav"))
        ffmpeg("-i", src, "-ar", "96000", "-ac", "2", str(folder / "96k_stereo.wav"))
        ffmpeg(
            "-i",
            src,
            "-ar",
            "44100",
            "-ac",
            "2",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "96k",
            str(folder / "speech.mp3"),
        )
        ffmpeg("-i", src, "-ar", "44100", "-c:a", "libvorbis", str(folder / "speech.ogg"))
        ffmpeg("-i", src, "-ar", "44100", "-c:a", "pcm_f32le", str(folder / "44k_float.wav"))
        return folder


# ------------------------------------------------------------------------------------------------
# Setup helpers (each returns a setup function for a Case)
def copy_portrait(dest: str = "in/portrait.jpg"):
    def setup(w: Path, fx: Fixtures) -> None:
        (w / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PORTRAIT, w / dest)

    return setup


def steps(*functions):
    """Run several setup functions in order."""

    def setup(w: Path, fx: Fixtures) -> None:
        for fn in functions:
            fn(w, fx)

    return setup


def speech_file(dest: str = "in/speech.wav", seconds: float = 1.0):
    def setup(w: Path, fx: Fixtures) -> None:
        (w / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fx.speech(seconds), w / dest)

    return setup


def fixture_file(name: str, dest: str, sub: str | None = None):
    """Copy fixture `name` (or the file `sub` inside its folder) to `dest`."""

    def setup(w: Path, fx: Fixtures) -> None:
        src = fx.get(name)
        if sub is not None:
            src = (src if src.is_dir() else src.parent) / sub
        (w / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, w / dest)

    return setup


def data_file(dest: str, data: bytes | str):
    def setup(w: Path, fx: Fixtures) -> None:
        put(w / dest, data)

    return setup


def image_file(dest: str, make: Callable[[], object], **save_kwargs):
    def setup(w: Path, fx: Fixtures) -> None:
        save_image(make(), w / dest, **save_kwargs)

    return setup


def made_file(dest: str, make: Callable[[Path, Fixtures], object]):
    """`make(path, fixtures)` writes the file at `path`."""

    def setup(w: Path, fx: Fixtures) -> None:
        (w / dest).parent.mkdir(parents=True, exist_ok=True)
        make(w / dest, fx)

    return setup


def folder(dest: str):
    def setup(w: Path, fx: Fixtures) -> None:
        (w / dest).mkdir(parents=True, exist_ok=True)

    return setup


def symlink(dest: str, target: str):
    def setup(w: Path, fx: Fixtures) -> None:
        (w / dest).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, w / dest)

    return setup


# Motions
def base_json(fx: Fixtures) -> dict:
    return json.loads(fx.get("motion").read_text())


def motion_json(dest: str, change: Callable[[dict], object]):
    def make(path: Path, fx: Fixtures) -> None:
        data = base_json(fx)
        result = change(data)
        put(path, json.dumps(data if result is None else result))

    return made_file(dest, make)


def motion_npz(dest: str, change: Callable[[dict], None]):
    def make(path: Path, fx: Fixtures) -> None:
        with np.load(fx.get("motion").with_suffix(".npz")) as src:
            arrays = {k: src[k] for k in src.files}
        change(arrays)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    return made_file(dest, make)


def motion_csv(dest: str, change: Callable[[list[list[str]]], list[list[str]]]):
    def make(path: Path, fx: Fixtures) -> None:
        rows = [
            line.split(",") for line in fx.get("motion").with_suffix(".csv").read_text().splitlines() if line
        ]
        put(path, "".join(",".join(r) + "\n" for r in change(rows)))

    return made_file(dest, make)


def csv_set(row: int, col: int, value: str):
    def change(rows):
        rows[row][col] = value
        return rows

    return change


def csv_same_timecodes(rows):
    for r in rows[2:]:
        r[0] = rows[1][0]
    return rows


def csv_23h_gap(rows):
    second = list(rows[1])
    second[0] = "23" + second[0][2:]
    return [rows[0], rows[1], second]


def set_key(key: str, value):
    def change(data):
        data[key] = value

    return change


def json_nan(data):
    data["expression"][3][5] = float("nan")


def json_zero_frames(data):
    data["expression"], data["rotation"], data["translation"] = [], [], []


def npz_nan(arrays):
    arrays["rotation"] = arrays["rotation"].copy()
    arrays["rotation"][2, 0] = np.nan


def npz_zero_frames(arrays):
    for key in ("expression", "rotation", "translation"):
        arrays[key] = arrays[key][:0]


def npz_wrong_shape(arrays):
    arrays["expression"] = arrays["expression"][:, :52]


def npz_pickled(path: Path, fx: Fixtures) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, expression=np.array([[1, 2], [3]], dtype=object), rotation=np.zeros((1, 3)),
                 translation=np.zeros((1, 3)), fps=np.float64(25))  # fmt: skip


def truncated_copy(name: str, sub: str | None = None, keep: float = 0.5):
    def make(path: Path, fx: Fixtures) -> None:
        src = fx.get(name)
        if sub is not None:
            src = (src if src.is_dir() else src.parent) / sub
        data = src.read_bytes()
        put(path, data[: int(len(data) * keep)])

    return make


# Avatars
def avatar_changed(change: Callable[[dict], None]):
    def make(path: Path, fx: Fixtures) -> None:
        from safetensors import safe_open
        from safetensors.numpy import save_file

        src = fx.get("avatar3d")
        with safe_open(str(src), framework="np") as fh:
            meta = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        change(tensors)
        save_file(tensors, str(path), metadata=meta)

    return make


def tri_negative(t):
    t["binding.triangle"] = t["binding.triangle"].copy()
    t["binding.triangle"][7] = -5


def tri_out_of_range(t):
    t["binding.triangle"] = t["binding.triangle"].copy()
    t["binding.triangle"][7] = 10**9


def scale_nan(t):
    t["binding.scale"] = t["binding.scale"].copy()
    t["binding.scale"][0:100] = np.nan


def bary_wrong_shape(t):
    t["binding.barycentric"] = np.ascontiguousarray(t["binding.barycentric"][:, :2])


def portrait_avatar(path: Path, fx: Fixtures) -> None:
    seed = fx.get("cache_seed")
    shutil.copy(sorted(seed.rglob("*.safetensors"))[0], path)


# Images
def crop_portrait(box):
    return lambda: portrait_image().crop(box)


def two_faces():
    from PIL import Image

    canvas = Image.new("RGB", (1024, 600), (200, 200, 200))
    canvas.paste(portrait_image(), (0, 0))
    canvas.paste(astronaut_image().resize((480, 480)), (530, 60))
    return canvas


def tiny_face():
    from PIL import Image

    canvas = Image.new("RGB", (1500, 1500), (150, 150, 150))
    canvas.paste(portrait_image().resize((40, 47)), (700, 700))
    return canvas


def tiled_faces():
    from PIL import Image

    small = portrait_image().resize((128, 150))
    canvas = Image.new("RGB", (512, 600))
    for i in range(4):
        for j in range(4):
            canvas.paste(small, (i * 128, j * 150))
    return canvas


def rgba_portrait():
    from PIL import Image

    rgba = np.asarray(portrait_image().convert("RGBA")).copy()
    rgba[:40, :, 3] = 0
    rgba[:, :30, 3] = 128
    return Image.fromarray(rgba)


def gray16_portrait():
    from PIL import Image

    gray = np.asarray(portrait_image().convert("L")).astype(np.uint16) * 257
    return Image.fromarray(gray)


def exif_rotated(path: Path, fx: Fixtures) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90° counter-clockwise; viewers turn it back clockwise
    portrait_image().rotate(90, expand=True).save(path, format="JPEG", quality=92, exif=exif.tobytes())


def animated_gif(path: Path, fx: Fixtures) -> None:
    first = portrait_image()
    second = first.transpose(0)  # mirrored
    first.save(path, format="GIF", save_all=True, append_images=[second], duration=200, loop=0)


def large_photo(path: Path, fx: Fixtures) -> None:
    from PIL import Image

    portrait_image().resize((6000, 8000), Image.BICUBIC).save(path, format="JPEG", quality=85)


def nan_float_wav(value: float):
    def make(path: Path, fx: Fixtures) -> None:
        import soundfile

        data, rate = soundfile.read(str(fx.get("audio_formats") / "44k_float.wav"), dtype="float32")
        data = data.copy()
        data[4000:4400] = value
        write_wav(path, data, rate, subtype="FLOAT")

    return make


def full_disk_filler(dest: str, kib: int = 188):
    def setup(w: Path, fx: Fixtures) -> None:
        put(w / dest, os.urandom(kib * 1024))

    return setup


def corrupt_cache(w: Path, fx: Fixtures) -> None:
    seed = fx.get("cache_seed")
    shutil.copytree(seed, w / "cache", dirs_exist_ok=True)
    for path in (w / "cache").rglob("*.safetensors"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


# Batch
def manifest(lines: list, dest: str = "in/manifest.jsonl", raw: str | None = None):
    def setup(w: Path, fx: Fixtures) -> None:
        text = (
            raw
            if raw is not None
            else "".join(json.dumps(line).replace("{W}", str(w)) + "\n" for line in lines)
        )
        put(w / dest, text)

    return setup


def batch_item(output: str = "x.mp4", **extra) -> dict:
    item = {"portrait": "portrait.jpg", "audio": "speech.wav", "output": output, "size": 128, "steps": 0}
    item.update(extra)
    return item


BATCH_INPUTS = steps(copy_portrait("in/portrait.jpg"), speech_file("in/speech.wav"))
BATCH_FLAGS = ["--workers", "1", "--quiet", "--cache-dir", "{cache}"]
BATCH_ALLOW = ("out", "out/results.jsonl", "out/.cache", "out/.cache/*")


# ------------------------------------------------------------------------------------------------
# Checks of successful outputs
def probe(path: Path) -> dict:
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise RuntimeError("ffprobe is not installed")
    result = subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "format=duration:stream=codec_type,codec_name,duration,nb_frames",
         "-of", "json", str(path)], capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise ValueError(result.stderr.strip()[-200:] or "ffprobe failed")
    return json.loads(result.stdout)


def check_mp4(path: Path, audio: bool | None = None) -> str | None:
    try:
        info = probe(path)
    except ValueError as err:
        return f"{path.name} is not a readable video: {err}"
    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"]
    if not video:
        return f"{path.name} has no video stream"
    duration = float(info.get("format", {}).get("duration") or 0)
    if duration <= 0:
        return f"{path.name} has no duration"
    if audio is True and not any(s.get("codec_type") == "audio" for s in streams):
        return f"{path.name} has no audio stream"
    decode = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    if decode.returncode != 0 or decode.stderr.strip():
        return f"{path.name} does not decode cleanly: {decode.stderr.strip()[-200:]}"
    return None


def mp4_duration(path: Path, stream: str = "audio") -> float:
    info = probe(path)
    for s in info.get("streams", []):
        if s.get("codec_type") == stream and s.get("duration"):
            return float(s["duration"])
    return float(info.get("format", {}).get("duration") or 0)


def check_output_file(path: Path) -> str | None:
    """Opens an output by its suffix; returns a problem or None."""
    if not path.exists():
        return f"expected output {path.name} is missing"
    if path.is_file() and path.stat().st_size == 0:
        return f"output {path.name} is empty"
    suffix = path.suffix.lower()
    try:
        if suffix in (".mp4", ".mov", ".mkv"):
            return check_mp4(path)
        if suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as image:
                image.load()
        elif suffix == ".npz":
            with np.load(path) as arrays:
                expression = arrays["expression"]
                if expression.ndim != 2 or expression.shape[0] == 0 or not np.isfinite(expression).all():
                    return f"{path.name}: expression {expression.shape} is empty or not finite"
        elif suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".csv":
            lines = path.read_text().splitlines()
            if len(lines) < 2 or not lines[0].startswith("Timecode"):
                return f"{path.name} is not a motion CSV with frames"
        elif suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as fh:
                if not list(fh.keys()):
                    return f"{path.name} holds no tensors"
        elif suffix == ".ply":
            if not path.read_bytes()[:3] == b"ply":
                return f"{path.name} is not a .ply"
    except Exception as err:  # noqa: BLE001 (any failure to open is the finding)
        return f"{path.name} cannot be opened: {type(err).__name__}: {str(err)[:160]}"
    return None


def espeak_seconds(text: bytes) -> float:
    """Length of `text` spoken literally by espeak-ng (read from stdin, so nothing is taken for a flag)."""
    import soundfile

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "x.wav"
        subprocess.run(["espeak-ng", *ESPEAK_FLAGS, "-w", str(wav), "--stdin"], input=text,
                       capture_output=True, check=True, timeout=60)  # fmt: skip
        info = soundfile.info(str(wav))
        return info.frames / info.samplerate


def literal_speech(text: str, other_file: str | None = None):
    """A check that out.mp4's audio lasts as long as `text` spoken literally (not as `other_file`'s contents)."""

    def check(w: Path, fx: Fixtures) -> str | None:
        if shutil.which("espeak-ng") is None:
            return None
        got = mp4_duration(w / "out.mp4", "audio")
        want = espeak_seconds(text.encode())
        if got < 0.5:
            return f"the spoken text lasts {got:.2f} s (literal {text!r}: {want:.2f} s)"
        tolerance = max(0.3, 0.15 * want)
        if other_file is not None:
            other = espeak_seconds(Path(other_file).read_bytes())
            if abs(got - other) < abs(got - want):
                return (f"audio lasts {got:.2f} s, like the contents of {other_file} ({other:.2f} s), "
                        f"not the literal text ({want:.2f} s)")  # fmt: skip
        if abs(got - want) > tolerance:
            return f"audio lasts {got:.2f} s but {text!r} spoken literally lasts {want:.2f} s"
        return None

    return check


def audio_duration_near(seconds: float, tolerance: float = 0.3):
    def check(w: Path, fx: Fixtures) -> str | None:
        got = mp4_duration(w / "out.mp4", "audio")
        if abs(got - seconds) > tolerance:
            return f"out.mp4's audio lasts {got:.2f} s, expected about {seconds:.2f} s"
        return None

    return check


def frames_near(path: str, seconds: float, fps: float = 25.0):
    def check(w: Path, fx: Fixtures) -> str | None:
        with np.load(w / path) as arrays:
            frames = arrays["expression"].shape[0]
        if abs(frames - seconds * fps) > 3:
            return f"{path} has {frames} frames, expected about {seconds * fps:.0f}"
        return None

    return check


# ------------------------------------------------------------------------------------------------
# The table
def build_cases() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, cli: str, args: list, expect: str = "fail", **kw) -> None:
        cases.append(Case(name, cli, list(args), expect, **kw))

    P = copy_portrait()
    S = speech_file()
    talk_ok = {"outputs": ("out.mp4",)}
    out = ["-o", "out.mp4"]

    # --- Talk: portraits -------------------------------------------------------------------------
    img = lambda name, setup, expect="fail", extra=(), **kw: add(  # noqa: E731
        f"talk_image_{name}", "talk", ["-s", f"in/{setup[0]}", "--audio", "in/speech.wav", *out, *FAST, *extra],
        expect, setup=steps(S, setup[1]), **({**talk_ok, **kw} if expect != "fail" else kw),
    )  # fmt: skip
    add("talk_image_missing", "talk", ["-s", "in/nope.jpg", "--audio", "in/speech.wav", *out, *FAST], setup=S)
    img("empty_file", ("p.jpg", data_file("in/p.jpg", b"")))
    img("text_named_jpg", ("p.jpg", data_file("in/p.jpg", "this is not a photo\n" * 20)))
    img("truncated_jpg", ("p.jpg", made_file("in/p.jpg", lambda p, fx: put(p, PORTRAIT.read_bytes()[:9000]))))
    img("svg_named_png", ("p.png", data_file("in/p.png", '<svg xmlns="http://www.w3.org/2000/svg"/>')))
    img("is_a_folder", ("pics", folder("in/pics")))
    img("png_named_jpg", ("p.jpg", image_file("in/p.jpg", portrait_image, format="PNG")), "ok")
    img("cmyk_jpg", ("p.jpg", image_file("in/p.jpg", lambda: portrait_image().convert("CMYK"))), "ok")
    img("16bit_rgb_png", ("p.png", made_file("in/p.png", lambda p, fx: png_16bit_rgb(p))), "ok")
    img("16bit_gray_png", ("p.png", image_file("in/p.png", gray16_portrait)), "ok")
    img(
        "palette_png",
        ("p.png", image_file("in/p.png", lambda: portrait_image().convert("P", palette=1))),
        "ok",
    )
    img("rgba_png", ("p.png", image_file("in/p.png", rgba_portrait)), "ok")
    img("grayscale_jpg", ("p.jpg", image_file("in/p.jpg", lambda: portrait_image().convert("L"))), "ok")
    img("exif_rotated_jpg", ("p.jpg", made_file("in/p.jpg", exif_rotated)), "ok")
    img("animated_gif", ("p.gif", made_file("in/p.gif", animated_gif)), "any")
    img("1x1_png", ("p.png", image_file("in/p.png", lambda: portrait_image().resize((1, 1)))))
    img("huge_header_png", ("p.png", made_file("in/p.png", lambda p, fx: png_huge_header(p))))
    img("huge_header_jpg", ("p.jpg", made_file("in/p.jpg", lambda p, fx: jpeg_huge_header(p))))
    img("blank_no_face", ("p.png", image_file("in/p.png", lambda: portrait_image().point(lambda v: 128))))
    img("astronaut", ("p.png", image_file("in/p.png", astronaut_image)), "ok")
    img("two_faces", ("p.png", image_file("in/p.png", two_faces)), "ok")
    img("two_faces_index_1", ("p.png", image_file("in/p.png", two_faces)), "ok", ["--face-index", "1"])
    img("face_index_99", ("p.jpg", copy_portrait("in/p.jpg")), "fail", ["--face-index", "99"])
    img("face_index_negative", ("p.jpg", copy_portrait("in/p.jpg")), "fail", ["--face-index", "-1"])
    img("tiny_face_in_big_frame", ("p.png", image_file("in/p.png", tiny_face)), "any")
    img(
        "face_cut_at_left_border", ("p.png", image_file("in/p.png", crop_portrait((250, 0, 512, 600)))), "any"
    )
    img("face_cut_at_top_border", ("p.png", image_file("in/p.png", crop_portrait((0, 165, 512, 600)))), "any")
    img("sixteen_tiled_faces", ("p.png", image_file("in/p.png", tiled_faces)), "any")
    img("large_6000x8000_jpg", ("p.jpg", made_file("in/p.jpg", large_photo)), "any",
        limits={"wall_s": 180, "rss_mb": 4000}, measure=True)  # fmt: skip

    # --- Talk: audio -----------------------------------------------------------------------------
    aud = lambda name, setup, expect="fail", extra=(), **kw: add(  # noqa: E731
        f"talk_audio_{name}", "talk", ["--audio", f"in/{setup[0]}", *out, *FAST, *extra], expect,
        setup=setup[1], **({**talk_ok, **kw} if expect != "fail" else kw),
    )  # fmt: skip
    aud("missing", ("nope.wav", folder("in")))
    aud("empty_file", ("a.wav", data_file("in/a.wav", b"")))
    aud("png_named_wav", ("a.wav", image_file("in/a.wav", portrait_image, format="PNG")))
    aud(
        "wav_header_only",
        ("a.wav", made_file("in/a.wav", lambda p, fx: write_wav(p, np.zeros(0, np.float32)))),
    )
    aud(
        "wav_cut_in_header",
        ("a.wav", made_file("in/a.wav", lambda p, fx: put(p, fx.speech(1.0).read_bytes()[:20]))),
    )
    aud("is_a_folder", ("sounds", folder("in/sounds")))
    add("talk_audio_dev_zero", "talk", ["--audio", "/dev/zero", *out, *FAST])
    aud(
        "silent_1s",
        ("a.wav", made_file("in/a.wav", lambda p, fx: write_wav(p, np.zeros(16000, np.float32)))),
        "ok",
    )
    aud("5ms", ("a.wav", made_file("in/a.wav", lambda p, fx: write_wav(p, speech_samples(0.005)))))
    aud(
        "8khz",
        ("a.wav", fixture_file("audio_formats", "in/a.wav", "8k.wav")),
        "ok",
        check=audio_duration_near(1.0),
    )
    aud("96khz_stereo", ("a.wav", fixture_file("audio_formats", "in/a.wav", "96k_stereo.wav")), "ok",
        check=audio_duration_near(1.0))  # fmt: skip
    aud("mp3", ("a.mp3", fixture_file("audio_formats", "in/a.mp3", "speech.mp3")), "ok")
    aud("ogg", ("a.ogg", fixture_file("audio_formats", "in/a.ogg", "speech.ogg")), "ok")
    aud("nan_samples_44k_float", ("a.wav", made_file("in/a.wav", nan_float_wav(float("nan")))))
    aud("inf_samples_44k_float", ("a.wav", made_file("in/a.wav", nan_float_wav(float("inf")))))
    aud("video_without_audio_track", ("v.mp4", fixture_file("blank_video", "in/v.mp4")))
    aud("mp4_cut_in_half", ("v.mp4", made_file("in/v.mp4", truncated_copy("video"))), "any")

    # --- Talk: text ------------------------------------------------------------------------------
    txt = lambda name, text, expect="fail", **kw: add(  # noqa: E731
        f"talk_text_{name}", "talk", [b"--text=" + (text if isinstance(text, bytes) else text.encode()), *out, *FAST],
        expect, **({**talk_ok, **kw} if expect != "fail" else kw),
    )  # fmt: skip
    txt(
        "dash_f_etc_hostname",
        "-f/etc/hostname",
        "ok",
        check=literal_speech("-f/etc/hostname", "/etc/hostname"),
    )
    txt("double_dash_help", "--help", "ok", check=literal_speech("--help"))
    txt("minus_5_degrees_outside", "-5 degrees outside", "ok", check=literal_speech("-5 degrees outside"))
    txt("empty", "")
    txt("whitespace_only", " \t \n ")
    txt(
        "120kb_of_words",
        ("the quick brown fox jumps over the lazy dog " * 2800)[:120_000],
        note="1 MB cannot be one argv string (Linux caps one argument at 128 KiB); a refusal (too long) is expected",
    )
    txt("binary_junk", junk_bytes(300, 1), "any")
    txt("control_characters", "hello\x07 \x1b[31mworld\x08\x7f again\r\n", "any")
    txt("unicode_and_emoji", "héllo wörld 👋 你好 مرحبا", "any")

    # --- Talk: motion files ----------------------------------------------------------------------
    mot = lambda name, file, setup, expect="fail", extra=(), **kw: add(  # noqa: E731
        f"talk_motion_{name}", "talk", ["--motion", f"in/{file}", *extra, *out, *FAST], expect, setup=setup,
        **({**talk_ok, **kw} if expect != "fail" else kw),
    )  # fmt: skip
    mot("ok_json", "m.json", fixture_file("motion", "in/m.json"), "ok")
    mot("csv_wrong_columns", "m.csv", data_file("in/m.csv", "a,b,c\n1,2,3\n4,5,6\n"))
    mot("csv_nan_value", "m.csv", motion_csv("in/m.csv", csv_set(3, 4, "nan")))
    mot("csv_inf_value", "m.csv", motion_csv("in/m.csv", csv_set(3, 4, "inf")))
    mot("csv_empty", "m.csv", data_file("in/m.csv", b""))
    mot("csv_header_only", "m.csv", motion_csv("in/m.csv", lambda rows: rows[:1]))
    mot("csv_all_same_timecode", "m.csv", motion_csv("in/m.csv", csv_same_timecodes))
    mot("csv_two_frames_23h_apart", "m.csv", motion_csv("in/m.csv", csv_23h_gap))
    mot("csv_binary_junk", "m.csv", data_file("in/m.csv", junk_bytes(3000, 2)))
    mot("json_wrong_keys", "m.json", data_file("in/m.json", '{"format": "headsplat.motion", "foo": [1]}'))
    mot("json_nan_value", "m.json", motion_json("in/m.json", json_nan))
    mot("json_fps_1e-9", "m.json", motion_json("in/m.json", set_key("fps", 1e-9)))
    mot("json_fps_1e9", "m.json", motion_json("in/m.json", set_key("fps", 1e9)))
    mot("json_fps_zero", "m.json", motion_json("in/m.json", set_key("fps", 0)))
    mot("json_fps_string", "m.json", motion_json("in/m.json", set_key("fps", "fast")))
    mot("json_zero_frames", "m.json", motion_json("in/m.json", json_zero_frames))
    mot("json_not_an_object", "m.json", data_file("in/m.json", "[1, 2, 3]"))
    mot("json_nested_100k_deep", "m.json", data_file("in/m.json", "[" * 100_000 + "]" * 100_000))
    mot("npz_wrong_shape", "m.npz", motion_npz("in/m.npz", npz_wrong_shape))
    mot("npz_nan_value", "m.npz", motion_npz("in/m.npz", npz_nan))
    mot("npz_fps_1e9", "m.npz", motion_npz("in/m.npz", lambda a: a.update(fps=np.float64(1e9))))
    mot("npz_fps_1e-9", "m.npz", motion_npz("in/m.npz", lambda a: a.update(fps=np.float64(1e-9))))
    mot(
        "npz_fps_array", "m.npz", motion_npz("in/m.npz", lambda a: a.update(fps=np.array([25.0, 25.0, 25.0])))
    )
    mot("npz_zero_frames", "m.npz", motion_npz("in/m.npz", npz_zero_frames))
    mot("npz_truncated", "m.npz", made_file("in/m.npz", truncated_copy("motion", "base.npz")))
    mot("npz_pickled_objects", "m.npz", made_file("in/m.npz", npz_pickled))
    mot("unknown_suffix", "m.txt", fixture_file("motion", "in/m.txt"))
    mot("with_audio_3x_longer", "m.json", steps(fixture_file("motion", "in/m.json"), speech_file(seconds=3.0)),
        extra=["--audio", "in/speech.wav"])  # fmt: skip
    add(
        "talk_two_drivers_audio_and_text",
        "talk",
        ["--audio", "in/speech.wav", "--text", "hello", *out, *FAST],
        setup=S,
    )

    # --- Talk: driving videos --------------------------------------------------------------------
    drv = lambda name, file, setup, expect="fail", **kw: add(  # noqa: E731
        f"talk_driving_{name}", "talk", ["--driving", f"in/{file}", *out, *FAST], expect, setup=setup,
        **({**talk_ok, **kw} if expect != "fail" else kw),
    )  # fmt: skip
    drv("text_file", "d.mp4", data_file("in/d.mp4", "not a video\n"))
    drv("photo", "d.jpg", copy_portrait("in/d.jpg"), "any")
    drv("video_without_face", "d.mp4", fixture_file("blank_video", "in/d.mp4"))
    drv("mp4_cut_in_half", "d.mp4", made_file("in/d.mp4", truncated_copy("video")), "any")

    # --- Talk: numbers ---------------------------------------------------------------------------
    num = lambda name, extra, expect="fail", **kw: add(  # noqa: E731
        f"talk_{name}", "talk", ["--audio", "in/speech.wav", *out, *FAST, *extra], expect, setup=S,
        **({**talk_ok, **kw} if expect != "fail" else kw),
    )  # fmt: skip
    num("fps_zero", ["--fps", "0"])
    num("fps_negative", ["--fps=-1"])
    num("fps_nan", ["--fps", "nan"])
    num("fps_inf", ["--fps", "inf"])
    num("fps_1e9", ["--fps", "1e9"])
    num("size_zero", ["--size", "0"])
    num("size_99999", ["--size", "99999"])
    num("steps_negative", ["--steps=-1"])
    num("steps_1000", ["--steps", "1000"])
    num("pose_scale_nan", ["--pose-scale", "nan"])
    num("expression_scale_inf", ["--expression-scale", "inf"])
    num("blink_rate_negative", ["--blink-rate=-3"])
    num("seed_negative", ["--seed=-1"], "any")
    num("seed_2_pow_70", ["--seed", str(2**70)], "any")

    # --- Talk: paths, cache, disk, signals -------------------------------------------------------
    pth = lambda name, args, setup=S, expect="fail", **kw: add(  # noqa: E731
        f"talk_{name}", "talk", [*args, *FAST], expect, setup=setup, **kw
    )
    pth("output_is_a_folder", ["--audio", "in/speech.wav", "-o", "dir.mp4"], steps(S, folder("dir.mp4")))
    pth("output_in_missing_folder", ["--audio", "in/speech.wav", "-o", "missing/out.mp4"])
    pth("output_in_proc", ["--audio", "in/speech.wav", "-o", "/proc/foo.mp4"])
    pth("output_in_sys", ["--audio", "in/speech.wav", "-o", "/sys/kernel/foo.mp4"])
    pth("output_wrong_suffix", ["--audio", "in/speech.wav", "-o", "out.avi"])
    pth(
        "output_is_the_audio_input",
        ["--audio", "in/v.mp4", "-o", "in/v.mp4"],
        fixture_file("video", "in/v.mp4"),
    )
    pth("output_is_the_input_by_other_name", ["--audio", "in/v.mp4", "-o", "in/../in/./v.mp4"],
        fixture_file("video", "in/v.mp4"))  # fmt: skip
    pth("output_symlink_to_input", ["--audio", "in/v.mp4", "-o", "link.mp4"],
        steps(fixture_file("video", "in/v.mp4"), symlink("link.mp4", "in/v.mp4")))  # fmt: skip
    pth("save_motion_bad_suffix", ["--audio", "in/speech.wav", "-o", "out.mp4", "--save-motion", "m.txt"])
    pth(
        "save_motion_missing_folder",
        ["--audio", "in/speech.wav", "-o", "out.mp4", "--save-motion", "no/m.npz"],
    )
    pth(
        "save_motion_is_the_audio",
        ["--audio", "in/speech.wav", "-o", "out.mp4", "--save-motion", "in/speech.wav"],
    )
    pth("output_on_full_disk", ["--audio", "in/speech.wav", "-o", "full/out.mp4"],
        steps(S, full_disk_filler("full/filler.bin")), mount_full_disk="full")  # fmt: skip
    pth("cache_entry_truncated", ["--audio", "in/speech.wav", "-o", "out.mp4"], steps(S, corrupt_cache), "ok",
        fresh_cache=True, outputs=("out.mp4",))  # fmt: skip
    pth("cache_dir_is_a_file", ["--audio", "in/speech.wav", "-o", "out.mp4", "--cache-dir", "in/c"],
        steps(S, data_file("in/c", "x")), "ok", outputs=("out.mp4",))  # fmt: skip
    pth("cache_dir_in_proc", ["--audio", "in/speech.wav", "-o", "out.mp4", "--cache-dir", "/proc/headsplat"], S,
        "ok", outputs=("out.mp4",))  # fmt: skip
    pth("ok_baseline", ["--audio", "in/speech.wav", "-o", "out.mp4"], S, "ok", outputs=("out.mp4",),
        check=audio_duration_near(1.0))  # fmt: skip
    long_talk = ["--audio", "in/speech.wav", "-o", "out.mp4", "--size", "256", "--quiet"]
    pth("sigint_after_8s", long_talk, speech_file(seconds=60.0), "interrupt", signal=signal.SIGINT)
    pth("sigterm_after_8s", long_talk, speech_file(seconds=60.0), "interrupt", signal=signal.SIGTERM,
        signal_group=False)  # fmt: skip

    # --- Avatar3D --------------------------------------------------------------------------------
    a3 = lambda name, args, setup=None, expect="fail", **kw: add(  # noqa: E731
        f"avatar3d_{name}",
        "avatar3d",
        [*args, "--turntable-seconds", "0", "--quiet"],
        expect,
        setup=setup,
        **kw,
    )
    av = lambda name, make: a3(f"avatar_{name}", ["--avatar", "in/a.safetensors", "-o", "o"],  # noqa: E731
                               steps(folder("o"), made_file("in/a.safetensors", make)))  # fmt: skip
    av("text_file", lambda p, fx: put(p, "not an avatar\n"))
    av("negative_triangle_index", avatar_changed(tri_negative))
    av("triangle_index_1e9", avatar_changed(tri_out_of_range))
    av("nan_scales", avatar_changed(scale_nan))
    av("barycentric_wrong_shape", avatar_changed(bary_wrong_shape))
    av("truncated", truncated_copy("avatar3d"))
    av("portrait_kind_from_talk_cache", portrait_avatar)
    a3("output_is_a_file", ["-o", "in/portrait.jpg"], P)
    a3("output_folder_missing", ["-o", "missing/deeper"])
    a3("output_is_proc", ["-o", "/proc"])
    a3("output_in_sys", ["-o", "/sys/kernel"])
    a3("output_on_full_disk", ["-o", "full"], folder("full"), mount_full_disk="full")
    a3("image_without_face", ["-s", "in/p.png", "-o", "."],
       image_file("in/p.png", lambda: portrait_image().point(lambda v: 128)))  # fmt: skip
    a3("num_gaussians_zero", ["--num-gaussians", "0", "-o", "."])
    a3("num_gaussians_negative", ["--num-gaussians=-10", "-o", "."])
    a3("size_zero", ["--size", "0", "-o", "."])
    add("avatar3d_turntable_nan", "avatar3d", ["--turntable-seconds", "nan", "-o", ".", "--quiet"])
    add("avatar3d_turntable_negative", "avatar3d", ["--turntable-seconds=-4", "-o", ".", "--quiet"])
    a3("ok_avatar_with_audio", ["--avatar", "in/a.safetensors", "-o", "o", "--audio", "in/speech.wav", "--size",
                                "128", "--steps", "0"], steps(folder("o"), fixture_file("avatar3d", "in/a.safetensors"), S),
       "ok", outputs=("o/head.ply", "o/head.splat", "o/talk3d.mp4"))  # fmt: skip
    a3("output_folder_holds_the_input_avatar", ["--avatar", "a.safetensors", "-o", "."],
       fixture_file("avatar3d", "a.safetensors"), "any", outputs=("head.ply", "head.splat"))  # fmt: skip
    add("avatar3d_sigterm_after_8s", "avatar3d", ["-o", "o", "--turntable-seconds", "30", "--quiet"], "interrupt",
        setup=folder("o"), signal=signal.SIGTERM, signal_group=False)  # fmt: skip

    # --- Track -----------------------------------------------------------------------------------
    tr = lambda name, args, setup=None, expect="fail", **kw: add(  # noqa: E731
        f"track_{name}", "track", [*args, "--quiet"], expect, setup=setup, **kw
    )
    V = fixture_file("video", "in/v.mp4")
    tr("missing_input", ["in/nope.mp4", "-o", "m.csv"])
    tr("text_named_jpg", ["in/p.jpg", "-o", "m.csv"], data_file("in/p.jpg", "hello\n"))
    tr("wav_as_input", ["in/speech.wav", "-o", "m.csv"], S)
    tr(
        "blank_image",
        ["in/p.png", "-o", "m.csv"],
        image_file("in/p.png", lambda: portrait_image().point(lambda v: 0)),
    )
    tr("blank_video", ["in/b.mp4", "-o", "m.csv"], fixture_file("blank_video", "in/b.mp4"))
    tr("mp4_cut_in_half", ["in/v.mp4", "-o", "m.npz"], made_file("in/v.mp4", truncated_copy("video")), "any",
       outputs=("m.npz",))  # fmt: skip
    tr("overlay_is_the_input_video", ["in/v.mp4", "-o", "m.csv", "--overlay", "in/v.mp4"], V)
    tr("overlay_is_the_input_photo", ["in/portrait.jpg", "-o", "m.csv", "--overlay", "in/portrait.jpg"], P)
    tr("output_bad_suffix", ["in/portrait.jpg", "-o", "m.txt"], P)
    tr("output_is_the_input", ["in/m.csv", "-o", "in/m.csv"], fixture_file("motion", "in/m.csv", "base.csv"))
    tr("output_in_proc", ["in/portrait.jpg", "-o", "/proc/m.csv"], P)
    tr("identity_in_missing_folder", ["in/portrait.jpg", "-o", "m.csv", "--identity", "no/id.json"], P)
    tr(
        "max_frames_zero_means_all",
        ["in/v.mp4", "-o", "m.csv", "--max-frames", "0"],
        V,
        "ok",
        outputs=("m.csv",),
    )
    tr("max_frames_negative", ["in/v.mp4", "-o", "m.csv", "--max-frames=-5"], V)
    tr("num_identity_99", ["in/portrait.jpg", "-o", "m.csv", "--num-identity", "99"], P)
    tr("identity_frames_zero", ["in/v.mp4", "-o", "m.csv", "--identity-frames", "0"], V)
    tr("face_index_5", ["in/portrait.jpg", "-o", "m.csv", "--face-index", "5"], P)
    tr("threads_zero", ["in/portrait.jpg", "-o", "m.csv", "--threads", "0"], P)
    tr("face_alignment_backend", ["in/portrait.jpg", "-o", "m.csv", "--backend", "face-alignment"], P, "any",
       outputs=("m.csv",))  # fmt: skip
    tr("ok_photo_csv", ["in/portrait.jpg", "-o", "m.csv", "--identity", "id.json"], P, "ok",
       outputs=("m.csv", "id.json"))  # fmt: skip
    tr("ok_video_npz_overlay", ["in/v.mp4", "-o", "m.npz", "--overlay", "ov.mp4"], V, "ok",
       outputs=("m.npz", "ov.mp4"), check=frames_near("m.npz", 2.0))  # fmt: skip

    # --- Speech to motion ------------------------------------------------------------------------
    a2m = lambda name, setup, expect="fail", extra=(), file="a.wav", outfile="m.npz", **kw: add(  # noqa: E731
        f"audio_to_motion_{name}", "audio_to_motion", ["--audio", f"in/{file}", "--out", outfile, *extra], expect,
        setup=setup, **({"outputs": (outfile,), **kw} if expect != "fail" else kw),
    )  # fmt: skip
    A = speech_file("in/a.wav")
    fmt = lambda name: fixture_file("audio_formats", f"in/{name}", name)  # noqa: E731
    a2m("png_named_wav", image_file("in/a.wav", portrait_image, format="PNG"))
    a2m("silent_1s", made_file("in/a.wav", lambda p, fx: write_wav(p, np.zeros(16000, np.float32))), "ok")
    a2m("5ms", made_file("in/a.wav", lambda p, fx: write_wav(p, speech_samples(0.005))))
    a2m("8khz", fmt("8k.wav"), "ok", file="8k.wav", check=frames_near("m.npz", 1.0))
    a2m("44khz", fmt("44k.wav"), "ok", file="44k.wav", check=frames_near("m.npz", 1.0))
    a2m("96khz_stereo", fmt("96k_stereo.wav"), "ok", file="96k_stereo.wav", check=frames_near("m.npz", 1.0))
    a2m("mp3", fmt("speech.mp3"), "ok", file="speech.mp3", check=frames_near("m.npz", 1.0))
    a2m("ogg", fmt("speech.ogg"), "ok", file="speech.ogg", check=frames_near("m.npz", 1.0))
    a2m("wav_named_mp3", speech_file("in/a.mp3"), "ok", file="a.mp3")
    a2m("nan_samples_44k_float", made_file("in/a.wav", nan_float_wav(float("nan"))))
    a2m("inf_samples_44k_float", made_file("in/a.wav", nan_float_wav(float("-inf"))))
    a2m("fps_zero", A, extra=["--fps", "0"])
    a2m("fps_1e9", A, extra=["--fps", "1e9"])
    a2m("fps_nan", A, extra=["--fps", "nan"])
    a2m("steps_11", A, extra=["--steps", "11"])
    a2m("guidance_nan", A, extra=["--guidance", "nan"])
    a2m("emotion_strength_5", A, extra=["--emotion-strength", "5"])
    a2m("out_bad_suffix", A, outfile="m.txt")
    a2m("out_in_missing_folder", A, outfile="no/m.npz")
    a2m("out_in_sys", A, outfile="/sys/m.npz")
    a2m("out_is_a_folder", steps(A, folder("m.npz")))
    a2m("out_is_the_audio", A, outfile="in/a.wav")
    a2m(
        "weights_text_file",
        steps(A, data_file("in/w.safetensors", "nope")),
        extra=["--weights", "in/w.safetensors"],
    )
    a2m("weights_missing", A, extra=["--weights", "in/none.safetensors"])
    a2m("transcript_unknown_words", A, "any", extra=["--steps", "0", "--transcript", "xyzzyq plugh"])

    # --- Live (a file replayed as a microphone) ---------------------------------------------------
    lv = lambda name, setup, expect="fail", extra=(), file="a.wav", **kw: add(  # noqa: E731
        f"live_{name}", "live", ["--audio", f"in/{file}", "--quiet", "--size", "96", *extra], expect,
        setup=setup, **kw,
    )  # fmt: skip
    lv("missing_audio", folder("in"), file="nope.wav")
    lv("png_named_wav", image_file("in/a.wav", portrait_image, format="PNG"))
    lv("nan_samples_44k_float", made_file("in/a.wav", nan_float_wav(float("nan"))))
    lv("size_10", A, extra=["--size", "10"])
    lv("chunk_0", A, extra=["--chunk", "0"])
    lv("max_latency_nan", A, extra=["--max-latency", "nan"])
    lv("block_ms_0", A, extra=["--block-ms", "0"])
    lv("steps_0", A, extra=["--steps", "0"])
    lv("portrait_text_file", steps(A, data_file("in/p.jpg", "not a photo\n" * 20)), extra=["-s", "in/p.jpg"])
    lv("output_bad_suffix", A, extra=["-o", "out.txt"])
    lv("output_is_the_audio", A, extra=["-o", "in/a.wav"])
    lv("save_motion_bad_suffix", A, extra=["--save-motion", "m.txt"])
    lv("latency_log_in_missing_folder", A, extra=["--latency-log", "no/lat.jsonl"])
    lv("silent_1s", made_file("in/a.wav", lambda p, fx: write_wav(p, np.zeros(16000, np.float32))), "ok",
       extra=["-o", "out.mp4", "--save-motion", "m.npz"], outputs=("out.mp4", "m.npz"))  # fmt: skip
    lv("ok_realtime_8khz", fmt("8k.wav"), "ok", file="8k.wav", extra=["--realtime", "-o", "out.mp4"],
       outputs=("out.mp4",))  # fmt: skip
    lv("sigint_realtime", speech_file("in/a.wav", seconds=30.0), "interrupt", extra=["--realtime", "-o", "out.mp4"],
       signal=signal.SIGINT)  # fmt: skip

    # --- Synthetic corpus ------------------------------------------------------------------------
    sc = lambda name, args, setup=None, expect="fail", **kw: add(  # noqa: E731
        f"synth_corpus_{name}", "synth_corpus", args, expect, setup=setup, **kw
    )
    sc("out_is_an_existing_file", ["--out", "in/file", "--clips", "2", "--held-out-clips", "1"],
       data_file("in/file", "keep me\n"))  # fmt: skip
    sc("clips_negative", ["--out", "corpus", "--clips=-3"])
    sc("held_out_clips_negative", ["--out", "corpus", "--held-out-clips=-1"])
    sc("noise_share_2", ["--out", "corpus", "--noise-share", "2"])
    sc("voice_shift_share_nan", ["--out", "corpus", "--voice-shift-share", "nan"])
    sc("fps_zero", ["--out", "corpus", "--fps", "0"])
    sc("out_in_proc", ["--out", "/proc/corpus", "--clips", "2", "--held-out-clips", "1"])
    sc("sigint_after_8s", ["--out", "corpus", "--clips", "400", "--held-out-clips", "10"], None, "interrupt",
       signal=signal.SIGINT, note="a corpus stopped half-way is left as partial files unless it is resumable")  # fmt: skip

    # --- Train motion ----------------------------------------------------------------------------
    pairs = steps(fixture_file("motion", "in/pairs/a.npz", "base.npz"), speech_file("in/pairs/a.wav"))
    tm = lambda name, args, setup=pairs, expect="fail", **kw: add(  # noqa: E731
        f"train_motion_{name}", "train_motion", args, expect, setup=setup, **kw
    )
    tm("corpus_missing", ["--corpus", "in/none", "--out", "w.safetensors", "--steps", "2"])
    tm("corpus_is_a_file", ["--corpus", "in/pairs/a.wav", "--out", "w.safetensors", "--steps", "2"])
    tm(
        "corpus_empty_folder",
        ["--corpus", "in/empty", "--out", "w.safetensors", "--steps", "2"],
        folder("in/empty"),
    )
    tm("no_data_source", ["--out", "w.safetensors", "--steps", "2"])
    tm("out_in_missing_folder", ["--pairs", "in/pairs", "--out", "no/w.safetensors", "--steps", "2"])
    tm("out_bad_suffix", ["--pairs", "in/pairs", "--out", "w.txt", "--steps", "2"])
    tm("out_in_proc", ["--pairs", "in/pairs", "--out", "/proc/w.safetensors", "--steps", "2"])
    tm("steps_negative", ["--pairs", "in/pairs", "--out", "w.safetensors", "--steps=-1"])
    tm("minutes_nan", ["--pairs", "in/pairs", "--out", "w.safetensors", "--minutes", "nan"])
    tm("lr_nan", ["--pairs", "in/pairs", "--out", "w.safetensors", "--steps", "2", "--lr", "nan"])
    tm(
        "batch_size_zero",
        ["--pairs", "in/pairs", "--out", "w.safetensors", "--steps", "2", "--batch-size", "0"],
    )
    tm("pairs_without_motions", ["--pairs", "in/only_audio", "--out", "w.safetensors", "--steps", "2"],
       speech_file("in/only_audio/a.wav"))  # fmt: skip
    tm("pairs_manifest_bad_json", ["--pairs", "in/m.jsonl", "--out", "w.safetensors", "--steps", "2"],
       steps(pairs, data_file("in/m.jsonl", '{"audio": "pairs/a.wav", "motion": \n')))  # fmt: skip
    tm("pairs_motion_nan", ["--pairs", "in/pairs", "--out", "w.safetensors", "--steps", "2"],
       steps(speech_file("in/pairs/a.wav"), motion_npz("in/pairs/a.npz", npz_nan)))  # fmt: skip
    tm("init_text_file", ["--pairs", "in/pairs", "--out", "w.safetensors", "--steps", "2", "--init", "in/i.safetensors"],
       steps(pairs, data_file("in/i.safetensors", "nope")))  # fmt: skip
    tm("resume_corrupt", ["--pairs", "in/pairs", "--out", "w.safetensors", "--steps", "2", "--resume", "in/c.safetensors"],
       steps(pairs, data_file("in/c.safetensors", junk_bytes(500, 3))))  # fmt: skip
    tm("tracker_not_importable", ["--videos", "in/vids", "--tracker", "no_such_module:f", "--out", "w.safetensors",
                                  "--steps", "2"], fixture_file("video", "in/vids/v.mp4"))  # fmt: skip
    tm("out_is_a_pairs_input", ["--pairs", "in/pairs", "--out", "in/pairs/a.npz", "--steps", "2"])
    tm("ok_pairs", ["--pairs", "in/pairs", "--out", "w.safetensors", "--steps", "2"], pairs, "ok",
       outputs=("w.safetensors", "w.json"), allow=("w.checkpoint.safetensors", "w.checkpoint.json"))  # fmt: skip
    tm("sigint_after_8s", ["--pairs", "in/pairs", "--out", "w.safetensors", "--minutes", "5", "--steps", "1000000"],
       pairs, "interrupt", signal=signal.SIGINT, allow=("w.checkpoint.safetensors", "w.checkpoint.json"))  # fmt: skip

    # --- Guide -----------------------------------------------------------------------------------
    tiny = ["--model", "tiny-sd3", "--steps", "2", "--height", "64", "--width", "64"]
    gd = lambda name, args, setup=None, expect="fail", **kw: add(  # noqa: E731
        f"guide_{name}", "guide", ["--prompt", "a portrait", *args], expect, setup=setup, **kw
    )
    gd("heads_99_99", [*tiny, "--heads", "99:99", "-o", "g.png"])
    gd("heads_garbage", [*tiny, "--heads", "twelve:three", "-o", "g.png"])
    gd("heads_missing_json", [*tiny, "--heads", "in/heads.json", "-o", "g.png"], folder("in"))
    gd(
        "heads_json_corrupt",
        [*tiny, "--heads", "in/heads.json", "-o", "g.png"],
        data_file("in/heads.json", "{nope"),
    )
    gd("soft_2", [*tiny, "--heads", "0:0", "--soft", "2", "-o", "g.png"])
    gd("scale_nan", [*tiny, "--heads", "0:0", "--scale", "nan", "-o", "g.png"])
    gd("guidance_range_reversed", [*tiny, "--heads", "0:0", "--guidance-range", "0.8,0.2", "-o", "g.png"])
    gd(
        "steps_zero",
        ["--model", "tiny-sd3", "--steps", "0", "--height", "64", "--width", "64", "-o", "g.png"],
    )
    gd("height_7", ["--model", "tiny-sd3", "--steps", "2", "--height", "7", "--width", "64", "-o", "g.png"])
    gd("dtype_bogus", [*tiny, "--dtype", "float7", "-o", "g.png"])
    gd("device_bogus", [*tiny, "--device", "tpu", "-o", "g.png"])
    gd("output_in_missing_folder", [*tiny, "--heads", "0:0", "-o", "missing/g.png"])
    gd("output_bad_suffix", [*tiny, "-o", "g.txt"])
    gd("output_in_proc", [*tiny, "-o", "/proc/g.png"])
    gd("model_empty_local_folder", ["--model", "in/model", "-o", "g.png"], folder("in/model"))
    gd("model_unknown_hub_id", ["--model", "nobody/no-such-model", "-o", "g.png"],
       note="no network here: the hub client retries before the error")  # fmt: skip
    gd("ok_tiny_sd3", [*tiny, "--heads", "0:0,1:*", "-o", "g.png"], None, "ok", outputs=("g.png",))

    gs = lambda name, args, setup=None, expect="fail", **kw: add(  # noqa: E731
        f"guide_search_{name}", "guide", ["search", *args], expect, setup=setup, **kw
    )
    prompts = data_file("in/prompts.txt", "a portrait\na cat\n")
    search = ["--prompts-file", "in/prompts.txt", *tiny, "--pool", "0:0,0:1", "-k", "1", "--rounds", "1"]
    gs("prompts_file_missing", ["--prompts-file", "in/none.txt", *tiny, "-o", "h.json"])
    gs(
        "prompts_file_empty",
        ["--prompts-file", "in/p.txt", *tiny, "-o", "h.json"],
        data_file("in/p.txt", "\n\n"),
    )
    gs("prompts_file_binary", ["--prompts-file", "in/p.txt", *tiny, "-o", "h.json"],
       data_file("in/p.txt", junk_bytes(2000, 4)), "any", outputs=("h.json",))  # fmt: skip
    gs("k_zero", [*search, "-k", "0", "-o", "h.json"], prompts)
    gs("rounds_negative", [*search, "--rounds=-1", "-o", "h.json"], prompts)
    gs("objective_bogus", [*search, "--objective", "beauty", "-o", "h.json"], prompts)
    gs("objective_target_missing", [*search, "--objective", "target:in/none.png", "-o", "h.json"], prompts)
    gs("objective_clip_unknown", [*search, "--objective", "clip:nobody/no-clip", "-o", "h.json"], prompts)
    gs("seeds_garbage", [*search, "--seeds", "a,b", "-o", "h.json"], prompts)
    gs("pool_out_of_range", [*search, "--pool", "99:99", "-o", "h.json"], prompts)
    gs("output_in_missing_folder", [*search, "-o", "missing/h.json"], prompts)
    gs(
        "resume_corrupt_state",
        [*search, "--resume", "-o", "in/h.json"],
        steps(prompts, data_file("in/h.json", "{x")),
    )
    gs("ok_tiny", [*search, "-o", "h.json"], prompts, "ok", outputs=("h.json",))

    # --- Batch -----------------------------------------------------------------------------------
    bt = lambda name, lines, expect="fail", extra=(), raw=None, setup=None, codes=(2,), **kw: add(  # noqa: E731
        f"batch_{name}", "batch", ["in/manifest.jsonl", "-o", "out", *BATCH_FLAGS, *extra], expect,
        setup=steps(BATCH_INPUTS, manifest(lines, raw=raw), *([setup] if setup else [])), codes=codes,
        allow=kw.pop("allow", BATCH_ALLOW if 1 in codes or expect != "fail" else ()), **kw,
    )  # fmt: skip
    bt("manifest_bad_json", [], raw='{"portrait": "portrait.jpg", "audio": \n')
    bt("manifest_unknown_key", [batch_item(colour="blue")])
    bt("manifest_line_is_a_list", [], raw='["portrait.jpg", "speech.wav"]\n')
    bt("manifest_empty", [], "any", raw="", allow=BATCH_ALLOW)
    bt("manifest_binary_junk", [], raw=junk_bytes(2000, 5).decode("latin-1"))
    bt("output_dot", [batch_item(".")])
    bt("output_empty_string", [batch_item("")])
    bt("output_escapes_with_dotdot", [batch_item("../x.mp4")])
    bt("output_absolute_path", [batch_item("{W}/abs.mp4")])
    bt("output_through_symlink_out_of_out", [batch_item("escape/x.mp4")], codes=(1, 2),
       setup=steps(folder("outside"), symlink("out/escape", "../outside")))  # fmt: skip
    bt("duplicate_outputs", [batch_item("x.mp4"), batch_item("x.mp4", seed=3)])
    bt("output_is_the_manifest", [batch_item("../in/manifest.jsonl")])
    bt("unknown_pipeline", [batch_item(pipeline="paint")])
    bt("item_size_zero", [batch_item(size=0)], codes=(1, 2))
    bt("item_portrait_missing", [batch_item(portrait="nobody.jpg")], codes=(1,))
    bt("item_fps_nan_string", [batch_item(fps="nan")], codes=(1, 2))
    bt("workers_zero", [batch_item()], extra=["--workers", "0"])
    bt("item_timeout_zero", [batch_item()], extra=["--item-timeout", "0"])
    add("batch_manifest_missing", "batch", ["in/none.jsonl", "-o", "out", *BATCH_FLAGS], setup=folder("in"))
    add("batch_manifest_wrong_suffix", "batch", ["in/m.txt", "-o", "out", *BATCH_FLAGS],
        setup=data_file("in/m.txt", json.dumps(batch_item()) + "\n"))  # fmt: skip
    add("batch_csv_without_header", "batch", ["in/m.csv", "-o", "out", *BATCH_FLAGS],
        setup=steps(BATCH_INPUTS, data_file("in/m.csv", "portrait.jpg,speech.wav,x.mp4\n")))  # fmt: skip
    add("batch_output_dir_is_a_file", "batch", ["in/manifest.jsonl", "-o", "in/portrait.jpg", *BATCH_FLAGS],
        setup=steps(BATCH_INPUTS, manifest([batch_item()])))  # fmt: skip
    bt("ok_one_item", [batch_item()], "ok", outputs=("out/x.mp4", "out/results.jsonl"))
    bt("sigterm_after_8s", [batch_item(audio="long.wav", size=256)], "interrupt",
       setup=speech_file("in/long.wav", 60.0), signal=signal.SIGTERM, signal_group=False)  # fmt: skip
    return cases


# ------------------------------------------------------------------------------------------------
# Running one case
def case_env(work: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADSPLAT_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        HOME=str(work / "home"), TMPDIR=str(work / "tmp"), HEADSPLAT_CACHE=str(cache),
        PYTHONDONTWRITEBYTECODE="1",
    )  # fmt: skip
    env.pop("PYTHONSTARTUP", None)
    return env


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SEPARATE = ("home", "tmp", "cache")
"""Top-level folders of a work folder checked on their own, not as outputs."""


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> "dir", "link:TARGET" or the file's sha256, for everything but SEPARATE."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in SEPARATE]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(rel_dir / name) if str(rel_dir) != "." else name
            try:
                if path.is_symlink():
                    state[rel] = "link:" + os.readlink(path)
                elif path.is_dir():
                    state[rel] = "dir"
                elif path.is_file():
                    state[rel] = sha256(path)
                else:
                    state[rel] = "special"
            except OSError as err:
                state[rel] = f"unreadable:{err.errno}"
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    return state


def group_alive(pgid: int) -> list[str]:
    """Live (not zombie) processes in process group `pgid`, as "pid name"."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name_end = stat.rfind(")")
        fields = stat[name_end + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(f"{entry.name} {stat[stat.find('(') + 1 : name_end]}")
    return alive


#: A tqdm progress bar ("talk:  40%|████      | 68/168 [00:05<00:08, 12.1frame/s]").
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")


def message_problem(stderr: str, case: Case, code: int) -> str | None:
    """None if stderr is one clear message for this exit; else what is wrong with it."""
    # What a terminal shows: a progress bar redrawn with "\r" is one line, and bars are not messages.
    shown = [line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n")]
    lines = [line for line in shown if line and not PROGRESS_BAR.search(line)]
    core = [line for line in lines if not line.startswith(("warning:", "note:"))]
    if not core:
        return "nothing on stderr"
    last = core[-1]
    if case.expect == "interrupt":
        if not last.startswith("interrupted"):
            return f"last stderr line does not start with 'interrupted': {last[:160]!r}"
        return f"{len(core) - 1} extra stderr line(s) before the message" if len(core) > 2 else None
    if re.match(r"^[\w. -]+: error: ", last) and core[0].startswith("usage:"):
        return None  # argparse: usage lines, then "PROG: error: ..."
    if case.cli == "batch" and code == 1 and re.match(r"^\d+ ok, \d+ failed", last):
        if any(line.startswith("failed:") for line in core) and all(
            line.startswith("failed:") for line in core[:-1]
        ):
            return None
        return "batch reported failures without a 'failed: ...' line per item"
    if (
        case.cli == "batch"
        and core[0].startswith("error:")
        and len(core) > 1
        and all(re.match(r"^(line \d+: |\.\.\. and \d+ more)", line) for line in core[1:])
    ):
        return None  # batch's manifest check: "error: manifest: N problem(s)", then one "line N: ..." each
    if not last.startswith("error:"):
        return f"last stderr line does not start with 'error:': {last[:160]!r}"
    if len(core) > 2:
        return f"{len(core) - 1} extra stderr line(s) before the error (e.g. {core[0][:100]!r})"
    return None


def tail(text: str, n: int = 3) -> list[str]:
    return [line.strip()[:240] for line in text.splitlines() if line.strip()][-n:]


def mount_tmpfs(path: Path) -> str | None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(path)],
                            capture_output=True, text=True)  # fmt: skip
    return None if result.returncode == 0 else (result.stderr.strip() or "mount failed")


def run_case(case: Case, root: Path, fx: Fixtures) -> Result:
    res = Result(case)
    work = root / "cases" / case.name
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if work.exists():
        shutil.rmtree(work)
    for sub in ("home", "tmp"):
        (work / sub).mkdir(parents=True)
    cache = work / "cache" if case.fresh_cache else fx.cache
    if case.fresh_cache:
        cache.mkdir()
    mounted = None
    try:
        if case.mount_full_disk:
            error = mount_tmpfs(work / case.mount_full_disk)
            if error:
                res.skipped = f"cannot mount a small tmpfs: {error}"
                return res
            mounted = work / case.mount_full_disk
        try:
            if case.setup is not None:
                case.setup(work, fx)
        except Exception as err:  # noqa: BLE001
            res.category = "setup_errors"
            res.problems.append(f"setup failed: {type(err).__name__}: {str(err)[:300]}")
            return res
        before = snapshot(work)
        _execute(case, res, work, cache, logs)
        after = snapshot(work)
        _inspect(case, res, work, cache, before, after, fx)
    finally:
        if mounted is not None:
            subprocess.run(["umount", "-l", str(mounted)], capture_output=True)
    return res


def _execute(case: Case, res: Result, work: Path, cache: Path, logs: Path) -> None:
    args = []
    for arg in case.args:
        if isinstance(arg, str):
            arg = arg.replace("{W}", str(work)).replace("{cache}", str(cache))
        args.append(arg)
    cmd = [sys.executable, "-m", f"pipelines.{case.cli}", *args]
    stdout_path, stderr_path = logs / f"{case.name}.stdout", logs / f"{case.name}.stderr"
    lock, done = threading.Lock(), [False]
    timed_out, signalled = [False], [False]
    start = time.perf_counter()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=work, env=case_env(work, cache), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)  # fmt: skip

        def send(sig: int, group: bool, flag: list) -> None:
            with lock:
                if done[0]:
                    return
                flag[0] = True
                try:
                    os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass

        timers = [threading.Timer(case.timeout, send, (signal.SIGKILL, True, timed_out))]
        if case.signal is not None:
            timers.append(
                threading.Timer(case.signal_after, send, (case.signal, case.signal_group, signalled))
            )
        for timer in timers:
            timer.start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: its pid stays ours
        with lock:
            done[0] = True
        for timer in timers:
            timer.cancel()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    res.wall_s = time.perf_counter() - start
    res.rss_mb = usage.ru_maxrss / 1024
    res.returncode = proc.returncode
    res.stderr = stderr_path.read_text(errors="replace")
    time.sleep(0.3)
    stray = group_alive(proc.pid)
    if stray:
        res.problems.append(f"left processes running after it exited: {', '.join(stray[:4])}")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if timed_out[0]:
        res.problems.append(f"timed out after {case.timeout:.0f} s (killed)")
    if case.signal is not None and not signalled[0]:
        res.problems.append(
            f"finished (exit {proc.returncode}) before the signal at {case.signal_after:.0f} s"
        )


def _inspect(
    case: Case, res: Result, work: Path, cache: Path, before: dict, after: dict, fx: Fixtures
) -> None:
    code = res.returncode
    partial: list[str] = []
    succeeded = code == 0
    expected_outputs = set(case.outputs) if succeeded else set()

    def allowed(rel: str) -> bool:
        if rel in expected_outputs or any(fnmatch.fnmatch(rel, p) for p in case.allow):
            return True
        # Folders holding expected outputs.
        return any(out.startswith(rel + "/") for out in expected_outputs) or (
            succeeded and any(p.startswith(rel + "/") for p in case.allow)
        )

    for rel, state in sorted(after.items()):
        if rel not in before and not allowed(rel):
            kind = "folder" if state == "dir" else "file"
            size = ""
            if state not in ("dir",) and not state.startswith("link:") and (work / rel).is_file():
                size = f" ({(work / rel).stat().st_size} bytes)"
            partial.append(f"new {kind} {rel}{size}")
    for rel, state in sorted(before.items()):
        if rel not in after:
            partial.append(f"input {rel} was removed")
        elif after[rel] != state and state != "dir":
            partial.append(f"input {rel} was modified")
    home = [str(p.relative_to(work)) for p in (work / "home").rglob("*")]
    if home:
        partial.append(f"wrote into HOME: {', '.join(sorted(home)[:4])}")
    leftovers = [
        p.name
        for p in (work / "tmp").iterdir()
        if not any(fnmatch.fnmatch(p.name, g) for g in TMPDIR_IGNORED)
    ]
    if leftovers:
        partial.append(f"left in TMPDIR: {', '.join(sorted(leftovers)[:4])}")
    if case.fresh_cache and cache.exists():
        hidden = [str(p.relative_to(cache)) for p in cache.rglob(".*")]
        if hidden:
            partial.append(f"temporary files left in the avatar cache: {', '.join(hidden[:4])}")
    if res.problems and any(p.startswith("left processes") for p in res.problems):
        partial.append(next(p for p in res.problems if p.startswith("left processes")))
        res.problems = [p for p in res.problems if not p.startswith("left processes")]

    tb = "Traceback" in res.stderr
    if any(p.startswith("timed out") for p in res.problems):
        res.category = "timeouts"
    elif any(p.startswith("finished (exit") for p in res.problems):
        res.category = "setup_errors"
    elif case.expect == "interrupt":
        want = 130 if case.signal == signal.SIGINT else 143
        if tb or code != want:
            res.category = "tracebacks" if tb or code != 0 else "wrong_successes"
            res.problems.append(f"exit {code} after {signal.Signals(case.signal).name}, expected {want}"
                                + (" (with a Traceback)" if tb else ""))  # fmt: skip
        else:
            problem = message_problem(res.stderr, case, code)
            res.category = "clear_errors" if problem is None else "unclear_errors"
            if problem:
                res.problems.append(problem)
    elif code == 0:
        if case.expect == "fail":
            res.category = "wrong_successes"
            res.problems.append("exit 0 for an input that should be refused")
            res.problems.extend(partial)
            partial = []
        else:
            bad = [p for p in (check_output_file(work / o) for o in case.outputs) if p]
            if not bad and case.check is not None:
                try:
                    extra = case.check(work, fx)
                except Exception as err:  # noqa: BLE001
                    extra = f"check failed: {type(err).__name__}: {str(err)[:200]}"
                if extra:
                    bad.append(extra)
            if tb:
                bad.append("a Traceback on stderr of a successful run")
            res.category = "wrong_successes" if bad else "ok_successes"
            res.problems.extend(bad)
    elif tb or code < 0 or code not in case.codes:
        res.category = "tracebacks"
        why = "a Traceback on stderr" if tb else (
            f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code} (expected {'/'.join(map(str, case.codes))})"
        )  # fmt: skip
        res.problems.append(why if not tb or code in case.codes else f"{why}, exit {code}")
    else:
        problem = message_problem(res.stderr, case, code)
        if case.expect == "ok":
            res.category = "wrong_failures"
            res.problems.append(f"refused an input that should work (exit {code})")
        else:
            res.category = "clear_errors" if problem is None else "unclear_errors"
            if problem:
                res.problems.append(problem)
    if partial:
        res.problems.extend(partial)
        if res.category in ("clear_errors", "ok_successes", "unclear_errors"):
            res.category = "partial_files"
    for key, limit in case.limits.items():
        value = res.wall_s if key == "wall_s" else res.rss_mb
        if value > limit:
            res.problems.append(f"{key} {value:.0f} over the bound {limit}")
            if res.category in ("clear_errors", "ok_successes"):
                res.category = "unclear_errors" if res.category == "clear_errors" else "wrong_successes"


# ------------------------------------------------------------------------------------------------
# Main
CATEGORIES = (
    "clear_errors", "ok_successes", "tracebacks", "partial_files", "wrong_successes", "wrong_failures",
    "unclear_errors", "timeouts", "setup_errors",
)  # fmt: skip
GOOD = ("clear_errors", "ok_successes")


def global_tmp_entries() -> set[str]:
    base = Path(tempfile.gettempdir())
    try:
        return {p.name for p in base.iterdir() if p.name.startswith(("headsplat-", ".headsplat"))}
    except OSError:
        return set()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", help="run the cases whose name contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default: 2)")
    parser.add_argument("--timeout", type=float, help=f"seconds per case (default: {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folders and logs (printed on stderr)"
    )
    parser.add_argument("--json", help="also write the full report (every case) to this file")
    args = parser.parse_args()
    cases = build_cases()
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        sys.exit(f"duplicate case names: {sorted(duplicates)}")
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    if args.list:
        for c in cases:
            print(f"{c.name:55s} {c.group:16s} {c.expect}")
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    if args.timeout:
        for c in cases:
            c.timeout = args.timeout
    root = Path(tempfile.mkdtemp(prefix="hostile-inputs-"))
    fx = Fixtures(root)
    tmp_before = global_tmp_entries()
    start = time.perf_counter()
    results: list[Result] = []
    done = [0]
    counter = threading.Lock()

    def one(case: Case) -> Result:
        try:
            res = run_case(case, root, fx)
        except Exception as err:  # noqa: BLE001 (a harness bug is reported, not fatal)
            res = Result(
                case, category="setup_errors", problems=[f"harness error: {type(err).__name__}: {err}"]
            )
        with counter:
            done[0] += 1
            mark = "skip" if res.skipped else res.category
            print(f"[{done[0]}/{len(cases)}] {case.name}: {mark} (exit {res.returncode}, {res.wall_s:.1f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
        return res

    # Slow cases first so the parallel run ends evenly.
    order = sorted(
        cases, key=lambda c: (c.expect not in ("interrupt",), c.cli not in ("guide", "train_motion"))
    )
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, order))
    finally:
        wall = time.perf_counter() - start
        leaked = sorted(global_tmp_entries() - tmp_before)
        if args.keep:
            print(f"work folders and logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    by_name = {r.case.name: r for r in results}
    results = [by_name[c.name] for c in cases if c.name in by_name]
    tried = [r for r in results if not r.skipped]
    summary: dict = {"tried": len(tried)}
    for category in CATEGORIES:
        summary[category] = sum(r.category == category for r in tried)
    summary["skipped"] = [{"case": r.case.name, "why": r.skipped} for r in results if r.skipped]
    per_cli: dict[str, dict[str, int]] = {}
    for r in tried:
        row = per_cli.setdefault(r.case.group, {"tried": 0, "good": 0})
        row["tried"] += 1
        row["good"] += r.category in GOOD
    summary["per_cli"] = per_cli
    summary["measurements"] = {
        r.case.name: {"exit": r.returncode, "wall_s": round(r.wall_s, 1), "peak_rss_mb": round(r.rss_mb)}
        for r in tried if r.case.measure
    }  # fmt: skip
    summary["notes"] = (
        [
            f"new in {tempfile.gettempdir()} during the run (outside every case's TMPDIR; other processes on this "
            f"machine may have made them): {', '.join(leaked)}"
        ]
        if leaked
        else []
    )
    summary["wall_s"] = round(wall, 1)
    summary["failures"] = [
        {"case": r.case.name, "class": r.category, "exit": r.returncode, "problem": "; ".join(r.problems),
         "stderr_tail": tail(r.stderr)}
        for r in tried if r.category not in GOOD
    ]  # fmt: skip
    line = json.dumps(summary, ensure_ascii=False)
    print(line)
    if args.json:
        report = dict(summary)
        report["cases"] = [
            {"case": r.case.name, "cli": r.case.group, "expect": r.case.expect, "class": r.category or "skipped",
             "exit": r.returncode, "wall_s": round(r.wall_s, 2), "peak_rss_mb": round(r.rss_mb),
             "problems": r.problems, "note": r.case.note, "stderr_tail": tail(r.stderr)}
            for r in results
        ]  # fmt: skip
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
