"""The one exit convention every headsplat command follows, and the output checks they share.

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)          # argparse: exit 2 on a bad flag
        return run_cli(lambda: work(args), interrupted="interrupted; nothing was written")

Exit codes: 0 done; 2 bad input or an output that cannot be written (one line on stderr, starting
"error:"); 130 interrupted by Ctrl-C, 143 by SIGTERM (what `timeout`, Docker and systemd send). Both
signals unwind the stack the same way, so temporary files and half-written outputs are removed.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from models.errors import HeadsplatError

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so `finally` blocks and context managers clean up."""


def _raise_terminated(signum, frame) -> None:  # noqa: ANN001 (signal handler signature)
    raise Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that caused `err` (through __cause__/__context__), if one did."""
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def os_error_message(err: OSError) -> str:
    """One line for an OSError a user can cause (full disk, read-only folder, a directory named as output)."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.ENOSPC:
        reason = "no space left on the device"
    name = err.filename if err.filename is not None else ""
    return f"{reason}: {name}" if name else reason


def run_cli(body: Callable[[], int | None], interrupted: str = "interrupted; nothing was written") -> int:
    """Run a command's work with the one exit convention; returns the exit code (see the module doc)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one "warning: ..." line, not a file:line block
            code = body()
        return EXIT_OK if code is None else int(code)
    except HeadsplatError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("error: out of memory: use a smaller input (shorter audio, a smaller photo)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        print(interrupted, file=sys.stderr)
        return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
    except Exception as err:
        # A signal that lands inside a native call (a numba kernel's dispatcher) comes back wrapped:
        # "SystemError: ... returned a result with an exception set", caused by the interrupt.
        cause = _interrupt_behind(err)
        if cause is None:
            raise
        print(interrupted, file=sys.stderr)
        return EXIT_TERMINATED if isinstance(cause, Terminated) else EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name one file: the same real path (through links, `./`), or, when both exist,
    the same file under another name (a hard link, another mount). A missing `b` can still be `a`."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist (yet)


def check_output(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), what: str = "output"
) -> Path:
    """The output path, after checking before any work that it can be written and is none of `inputs`.

    Refuses: an output that resolves to an input (a link, `./x`, or the same file by another name),
    an existing directory, a missing folder, and a folder this process cannot create files in (read-only,
    /proc, a full quota), which is tried by creating and removing an empty temporary file there.
    """
    path = Path(path)
    for source in inputs:
        if source is None or str(source) == "":
            continue
        if same_file(source, path):
            raise HeadsplatError(f"the {what} {path} is also an input; write it somewhere else")
    if path.is_dir():
        raise HeadsplatError(f"the {what} {path} is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise HeadsplatError(f"output folder does not exist: {folder}")
    check_writable_folder(folder)
    return path


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """The folder, if a file can be created in it (tried, not guessed: root ignores permission bits)."""
    folder = Path(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".headsplat-probe-", dir=folder)
    except OSError as err:
        raise HeadsplatError(f"cannot write in {folder}: {os_error_message(err).split(':')[0]}") from err
    os.close(fd)
    os.unlink(probe)
    return folder
