"""The standard streams a command writes to: closed ones are refused before any work, failed writes are one line.

A process started with file descriptor 1 closed would hand that number to the first file it opens, and every
``print`` would then land in that file (an artifact, a lock); so closed descriptors are reopened on /dev/null
first. A closed stdout is then an error (the command's output would be lost without a word); a reader that
goes away (``| head``) ends the command quietly, with exit code 1.
"""

from __future__ import annotations

import errno
import io
import os
import sys

from densesearch.core.errors import os_failure

BROKEN_PIPE_EXIT = 1  # quietly, as rich ends a table whose reader went away (and as Python's docs advise)
STREAM_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _reopen_on_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)
    stream = io.TextIOWrapper(io.FileIO(fd, "r" if fd == 0 else "w", closefd=False), encoding="utf-8")
    setattr(sys, STREAM_NAMES[fd], stream)


def guard_standard_streams() -> str | None:
    """Reopen closed descriptors 0-2 on /dev/null; a message when stdout was closed (None when it is open)."""
    closed = [fd for fd in (0, 1, 2) if not _is_open(fd)]
    for fd in closed:
        _reopen_on_devnull(fd)
    if 1 in closed:
        return "standard output is closed, so the output would be lost (redirect it to /dev/null to discard it)"
    return None


def discard_stdout() -> None:
    """Point stdout at /dev/null, so that the buffered output a failed write left is not written again at exit."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    finally:
        os.close(null)


def is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


def output_failed(exc: OSError, announce: bool = True) -> int:
    """A write to stdout failed: stop writing there; a reader gone away is quiet, anything else one line (unless
    ``announce`` is off: an error was already reported). The exit code."""
    discard_stdout()
    if is_broken_pipe(exc):
        return BROKEN_PIPE_EXIT
    if announce:
        print(f"error: {os_failure(exc, 'writing the output failed').message}", file=sys.stderr)
    return 1


def flush_stdout(code: int) -> int:
    """Flush what is still buffered (a failure: `output_failed`, named only when nothing failed before)."""
    try:
        sys.stdout.flush()
    except OSError as exc:
        failed = output_failed(exc, announce=code == 0)
        return failed if code == 0 or is_broken_pipe(exc) else code
    return code
