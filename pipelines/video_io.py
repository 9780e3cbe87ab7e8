"""The project's one video reader and writer (ffmpeg through imageio-ffmpeg).

`read_video(path)` gives the frames (RGB uint8 [H, W, 3], upright), fps and size; `VideoWriter` writes
H.264/yuv420p .mp4 atomically (a crash never leaves a half-written file), optionally muxing an audio track.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import HeadsplatError
from pipelines.files import atomic_output, require_file

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".gif", ".mpg", ".mpeg", ".wmv", ".flv")


@dataclass
class Video:
    """An opened video: iterate it for RGB uint8 frames [H, W, 3]."""

    path: Path
    fps: float  # frames per second
    size: tuple[int, int]  # (width, height) of the frames as delivered (display rotation applied)
    num_frames: int  # estimated from duration × fps (0 if unknown); the iterator is authoritative
    audio: bool  # whether the file has an audio stream

    def __iter__(self) -> Iterator[np.ndarray]:
        import imageio_ffmpeg

        width, height = self.size
        gen = imageio_ffmpeg.read_frames(os.path.abspath(self.path))  # never read as a protocol
        try:
            next(gen)  # metadata, already read by read_video
            for raw in gen:
                yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        except RuntimeError as err:
            raise HeadsplatError(f"cannot decode {self.path.name}: {str(err).splitlines()[0]}") from err
        finally:
            gen.close()


def read_video(path: str | os.PathLike) -> Video:
    """Open a video file; its frames come from iterating the result (decoded lazily)."""
    path = require_file(path, "video")
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(os.path.abspath(path))
    try:
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else "no video stream"
        raise HeadsplatError(f"cannot read video {path.name}: {msg}") from err
    finally:
        gen.close()
    fps = float(meta.get("fps") or 0.0)
    size = tuple(int(v) for v in meta.get("size") or (0, 0))
    if fps <= 0 or not math.isfinite(fps) or min(size) <= 0:
        raise HeadsplatError(f"cannot read video {path.name}: no frame rate or frame size in the file")
    # ffmpeg auto-rotates phone videos, and imageio-ffmpeg's "size" is already the rotated, delivered size.
    duration = float(meta.get("duration") or 0.0)
    return Video(path, fps, size, max(0, round(duration * fps)), bool(meta.get("audio_codec")))


class VideoWriter:
    """Write RGB uint8 frames [H, W, 3] to an H.264 .mp4, atomically; `audio` (a file) is muxed in.

    Use as a context manager: `with VideoWriter(path, fps) as out: out.write(frame)`. Odd frame sizes are
    padded by one pixel (yuv420p needs even sizes). Any encoder failure (a full disk, an unreadable audio
    track, ffmpeg killed) raises HeadsplatError and leaves no file: the output appears only when ffmpeg
    has finished it and exited cleanly.
    """

    def __init__(
        self, path: str | os.PathLike, fps: float, audio: str | os.PathLike | None = None, quality: int = 7
    ):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".mov", ".mkv", ".m4v"):
            raise HeadsplatError(f"video outputs are .mp4/.mov/.mkv/.m4v files; got {self.path.name!r}")
        if not (fps > 0 and math.isfinite(fps)):
            raise HeadsplatError(f"fps must be positive, got {fps}")
        if audio is not None:
            require_file(audio, "audio file")
        self.fps = float(fps)
        self.audio = None if audio is None else os.path.abspath(audio)
        self.quality = quality
        self.frames_written = 0
        self._stack: contextlib.ExitStack | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> VideoWriter:
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_output(self.path))
        return self

    def _command(self, width: int, height: int) -> list[str]:
        from fractions import Fraction

        from pipelines.audio_io import ffmpeg_exe

        rate = Fraction(self.fps).limit_denominator(100_000)
        cmd = [ffmpeg_exe(), "-nostdin", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
        cmd += ["-s", f"{width}x{height}", "-r", str(rate), "-i", "pipe:0"]
        if self.audio:
            cmd += ["-i", "file:" + self.audio, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac"]
        else:
            cmd += ["-an"]
        # crf 15 (quality 7 of 10, imageio's scale). veryfast: a third of "medium"'s encoder time for a
        # slightly larger file; the encoder runs beside the renderer on the same cores. No -shortest:
        # ffmpeg would stop reading frames (a broken pipe) when the audio ends first.
        crf = int((1 - self.quality / 10) * 51)
        cmd += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf), "-preset", "veryfast"]
        muxer = {".mkv": "matroska", ".mov": "mov"}.get(self.path.suffix.lower(), "mp4")
        cmd += ["-movflags", "+faststart", "-f", muxer]
        return [*cmd, "file:" + os.path.abspath(self._tmp)]

    def _failure(self) -> HeadsplatError:
        """The encoder's own last words as one line (it has exited, or its pipe broke)."""
        assert self._proc is not None and self._log is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._log.seek(0)
        lines = [
            line.strip() for line in self._log.read().decode(errors="replace").splitlines() if line.strip()
        ]
        text = " ".join(lines)
        if "No space left" in text:
            reason = "no space left on the device"
        elif lines:
            reason = lines[-1][:300]
        else:
            reason = f"ffmpeg exit status {self._proc.returncode}"
        return HeadsplatError(f"writing {self.path.name} failed: {reason}")

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame [H, W, 3]; every frame must have the first frame's size."""
        assert self._stack is not None, "use VideoWriter as a context manager"
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise HeadsplatError(f"video frames must be RGB uint8 [H, W, 3]; got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        if self._proc is None:
            self._size = (w, h)
            self._log = self._stack.enter_context(tempfile.TemporaryFile())
            self._proc = subprocess.Popen(
                self._command(w + w % 2, h + h % 2), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=self._log, start_new_session=True,  # Ctrl-C reaches us, and we stop ffmpeg
            )  # fmt: skip
            self._stack.callback(self._stop)
        elif (w, h) != self._size:
            raise HeadsplatError(
                f"frame {self.frames_written} is {w}×{h}; the video is {self._size[0]}×{self._size[1]}"
            )
        if w % 2 or h % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except (BrokenPipeError, OSError):
            raise self._failure() from None
        self.frames_written += 1

    def _finish(self) -> None:
        """Close ffmpeg's input, wait for it to finish the file and check that it succeeded."""
        assert self._proc is not None
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            raise self._failure() from None
        if self._proc.wait() != 0:
            raise self._failure()
        if not self._tmp.exists() or self._tmp.stat().st_size == 0:
            raise HeadsplatError(f"writing {self.path.name} failed: the encoder wrote nothing")

    def _stop(self) -> None:
        """Make sure ffmpeg is gone (after an error or an interrupt it is killed, not waited for)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        try:
            if exc_type is None:
                if self._proc is None:
                    raise HeadsplatError(f"no frames were written to {self.path.name}")
                self._finish()
        except BaseException as err:
            stack.__exit__(type(err), err, err.__traceback__)  # stops ffmpeg, removes the temporary file
            raise
        stack.__exit__(exc_type, exc, tb)
