"""Motion and identity files: .npz, JSON, and ARKit-52 CSV in Apple's Live Link Face layout."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from models.errors import HeadsplatError
from models.latent import STANDARD_RATES, Identity, Motion, format_timecode, timecodes_to_seconds
from pipelines.files import atomic_output, require_file

MOTION_SUFFIXES = (".npz", ".json", ".csv")
#: Live Link Face's timecode frame rate, used for the frame field of the CSVs headsplat writes.
TIMECODE_FPS = 60.0


def save_motion(motion: Motion, path: str | os.PathLike, csv_translation: bool = False) -> Path:
    """Write `motion` as .npz, .json or Live Link Face .csv (chosen by the suffix), atomically. A CSV has
    Live Link Face's exact columns (Timecode, BlendShapeCount, 52 blendshapes, 9 head and eye angles);
    `csv_translation` adds headsplat's HeadTranslationX/Y/Z after them (read back by `load_motion`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MOTION_SUFFIXES:
        raise HeadsplatError(f"motion files end in {', '.join(MOTION_SUFFIXES)}; got {path.name!r}")
    with atomic_output(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **motion.to_arrays())
        elif suffix == ".json":
            tmp.write_text(json.dumps(motion.to_dict()))
        else:
            tmp.write_text(motion_to_arkit_csv(motion, include_translation=csv_translation), newline="")
    return path


#: A motion file's frame rate must lie in this range (frames per second), and it may last at most as long
#: as the longest audio Talk accepts: a file claiming 1e-9 fps would otherwise ask for 1e11 s of frames.
MOTION_FPS_RANGE = (1.0, 1000.0)
MAX_MOTION_SECONDS = 2 * 3600.0


def load_motion(path: str | os.PathLike, csv_fps: float | None = None) -> Motion:
    """Read a motion from .npz, .json or ARKit CSV; `csv_fps` is the CSV timecode rate (read off the data if None).

    Raises HeadsplatError for anything that is not a valid motion: bad arrays, NaN, an fps outside
    MOTION_FPS_RANGE, a duration over MAX_MOTION_SECONDS, no frames at all.
    """
    path = require_file(path, "motion file")
    motion = _read_motion(path, csv_fps)
    lo, hi = MOTION_FPS_RANGE
    if not lo <= motion.fps <= hi:
        raise HeadsplatError(
            f"{path.name} says {motion.fps:g} fps; a motion file's rate must be {lo:g}-{hi:g}"
        )
    if motion.num_frames == 0:
        raise HeadsplatError(f"{path.name} holds no frames")
    if motion.duration > MAX_MOTION_SECONDS:
        raise HeadsplatError(
            f"{path.name} lasts {motion.duration / 60:.0f} min; the limit is {MAX_MOTION_SECONDS / 60:.0f} min"
        )
    return motion


def _read_motion(path: Path, csv_fps: float | None) -> Motion:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return Motion.from_arrays(arrays)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise HeadsplatError(f"cannot read motion file {path.name}: not a valid .npz ({err})") from err
    if suffix == ".json":
        return Motion.from_dict(_read_json(path, "motion file"))
    if suffix == ".csv":
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise HeadsplatError(f"cannot read motion file {path.name}: not a text CSV") from err
        return motion_from_arkit_csv(text, fps=csv_fps, source=path.name)
    raise HeadsplatError(f"motion files end in {', '.join(MOTION_SUFFIXES)}; got {path.name!r}")


def _read_json(path: Path, what: str):
    """The parsed JSON of `path`; a HeadsplatError for anything that is not readable JSON text."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HeadsplatError(f"cannot read {what} {path.name}: invalid JSON ({err})") from err
    except RecursionError as err:  # json's C parser recurses once per nesting level
        raise HeadsplatError(f"cannot read {what} {path.name}: its JSON is nested too deeply") from err


def motion_to_arkit_csv(motion: Motion, include_translation: bool = False) -> str:
    """The CSV text: Timecode, BlendShapeCount, 52 blendshapes, head and eye angles (+ translation)."""
    columns, table = motion.to_arkit_table(include_translation=include_translation)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Timecode", "BlendShapeCount", *columns])
    for i, row in enumerate(table):
        # 61 = 52 blendshapes + 9 angles, as Live Link Face writes it.
        # Timecode frames count at Live Link Face's 60 fps with a sub-frame fraction, whatever the
        # motion's own rate: readers (ours included) then recover the times without being told the rate.
        writer.writerow([format_timecode(i / motion.fps, TIMECODE_FPS), 61, *(f"{v:.9g}" for v in row)])
    return out.getvalue()


def motion_from_arkit_csv(text: str, fps: float | None = None, source: str = "CSV") -> Motion:
    """Parse Live Link Face CSV text into a Motion at the timecode rate (resampled if rows are uneven)."""
    rows = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if not rows:
        raise HeadsplatError(f"{source} is empty")
    header = [h.strip() for h in rows[0]]
    if not header or header[0].lower() != "timecode":
        raise HeadsplatError(f"{source} is not a Live Link Face CSV: the first column must be 'Timecode'")
    data_rows = rows[1:]
    if not data_rows:
        raise HeadsplatError(f"{source} has a header but no frames")
    skip = 2 if len(header) > 1 and header[1].lower() == "blendshapecount" else 1
    columns = header[skip:]
    timecodes, values = [], []
    for line, row in enumerate(data_rows, start=2):
        if len(row) != len(header):
            raise HeadsplatError(f"{source} line {line}: {len(row)} fields, the header has {len(header)}")
        timecodes.append(row[0])
        try:
            values.append([float(v) for v in row[skip:]])
        except ValueError as err:
            raise HeadsplatError(f"{source} line {line}: not a number ({err})") from err
    times, rate = timecodes_to_seconds(timecodes, fps)
    table = np.asarray(values, np.float64)
    # Before the rows are put on a grid: a take of hours would be millions of interpolated frames.
    if times[-1] > MAX_MOTION_SECONDS:
        raise HeadsplatError(
            f"{source} spans {times[-1] / 3600:.1f} h from its first to its last timecode; the limit is "
            f"{MAX_MOTION_SECONDS / 60:.0f} min: cut the take, or fix timecodes that jump"
        )
    # The rows' own spacing is the motion's frame rate (a 25 fps take written with 60 fps timecodes
    # is still 25 fps); snap it to a standard rate when it is one.
    steps = np.diff(times)
    motion_fps = 1.0 / float(np.median(steps)) if len(steps) else rate
    lo, hi = MOTION_FPS_RANGE
    if not lo <= motion_fps <= hi:
        raise HeadsplatError(
            f"{source}'s rows are {float(np.median(steps)):.3g} s apart ({motion_fps:.3g} fps); a motion's "
            f"rate must be {lo:g}-{hi:g} fps: fix the timecodes"
        )
    near = [r for r in STANDARD_RATES if abs(r - motion_fps) < 1e-3 * r]
    motion_fps = near[0] if near else round(motion_fps, 3)
    uniform = np.allclose(times, np.arange(len(times)) / motion_fps, atol=0.25 / motion_fps)
    if not uniform:
        # Dropped or uneven frames: put them back on a regular grid.
        grid = np.arange(int(np.floor(times[-1] * motion_fps + 1e-6)) + 1) / motion_fps
        table = np.stack([np.interp(grid, times, table[:, c]) for c in range(table.shape[1])], axis=1)
    return Motion.from_arkit_table(columns, table, motion_fps)


def save_identity(identity: Identity, path: str | os.PathLike) -> Path:
    """Write an identity as JSON, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(identity.to_dict()))
    return path


def load_identity(path: str | os.PathLike) -> Identity:
    path = require_file(path, "identity file")
    return Identity.from_dict(_read_json(path, "identity file"))
