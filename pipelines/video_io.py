"""The project's one video reader and writer (ffmpeg through imageio-ffmpeg).

`read_video(path)` gives the frames (RGB uint8 [H, W, 3], upright), fps and size; `VideoWriter` writes
H.264/yuv420p .mp4 atomically (a crash never leaves a half-written file), optionally muxing an audio track.
"""

from __future__ import annotations

import contextlib
import math
import os
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
        gen = imageio_ffmpeg.read_frames(str(self.path))
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

    gen = imageio_ffmpeg.read_frames(str(path))
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
    padded by one pixel (yuv420p needs even sizes).
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
        self.audio = None if audio is None else str(audio)
        self.quality = quality
        self.frames_written = 0
        self._stack: contextlib.ExitStack | None = None
        self._gen = None
        self._size: tuple[int, int] | None = None

    def __enter__(self) -> VideoWriter:
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_output(self.path))
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame [H, W, 3]; every frame must have the first frame's size."""
        assert self._stack is not None, "use VideoWriter as a context manager"
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise HeadsplatError(f"video frames must be RGB uint8 [H, W, 3]; got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        if self._gen is None:
            import imageio_ffmpeg

            self._size = (w, h)
            padded = (w + w % 2, h + h % 2)
            # No -shortest: ffmpeg would stop reading frames (a broken pipe) when the audio ends first.
            # veryfast: a third of "medium"'s encoder time for a slightly larger file; the encoder runs
            # beside the renderer on the same cores.
            output_params = ["-preset", "veryfast", "-movflags", "+faststart"]
            self._gen = imageio_ffmpeg.write_frames(
                str(self._tmp),
                padded,
                fps=self.fps,
                codec="libx264",
                pix_fmt_out="yuv420p",
                quality=self.quality,
                macro_block_size=1,
                output_params=output_params,
                audio_path=self.audio,
                audio_codec="aac" if self.audio else None,
                ffmpeg_log_level="error",  # not its chatter ("Guessed Channel Layout") on the user's console
            )
            self._gen.send(None)
        elif (w, h) != self._size:
            raise HeadsplatError(
                f"frame {self.frames_written} is {w}×{h}; the video is {self._size[0]}×{self._size[1]}"
            )
        if w % 2 or h % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        self._gen.send(np.ascontiguousarray(frame))
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        try:
            if self._gen is not None:
                self._gen.close()  # flushes ffmpeg and finishes the file
            if exc_type is None and self.frames_written == 0:
                raise HeadsplatError(f"no frames were written to {self.path.name}")
        except BaseException as err:
            stack.__exit__(type(err), err, err.__traceback__)  # removes the temporary file
            raise
        stack.__exit__(exc_type, exc, tb)
