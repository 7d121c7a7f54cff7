"""Logging through loguru, in journald's native form when stderr is connected to the journal."""

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

# syslog priorities; journald reads a leading "<N>" as the entry's priority.
_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

# journald stamps entries itself. The prefix comes from `extra` because a literal "<6>" in a loguru format
# string would be read as a colour tag.
_JOURNAL_FORMAT = "{extra[priority]}{message}"
_HUMAN_FORMAT = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <8}</level> {message}"


def _add_priority(record: "Record") -> None:
    record["extra"]["priority"] = f"<{_PRIORITY.get(record['level'].name, 6)}>"


def _is_journal(stream: TextIO | None, journal_stream: str | None) -> bool:
    # systemd sets JOURNAL_STREAM=device:inode for the stream it connected; a child whose stderr was
    # redirected elsewhere inherits the variable, hence the comparison.
    if not journal_stream:
        return False
    try:
        status = os.fstat(2 if stream is None else stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation (no file descriptor) is both
        return False
    return journal_stream == f"{status.st_dev}:{status.st_ino}"


def setup_logging(
    level: str, *, environ: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> None:
    env = os.environ if environ is None else environ
    journal = _is_journal(stream, env.get("JOURNAL_STREAM"))
    logger.remove()
    # Installed in both modes: configure() cannot take a patcher away again, and the value is harmless.
    logger.configure(patcher=_add_priority)
    logger.add(
        sys.stderr if stream is None else stream,
        level=level,
        format=_JOURNAL_FORMAT if journal else _HUMAN_FORMAT,
        colorize=False if journal else None,
        # Variable values in tracebacks can leak data and spread one error over many journal entries.
        diagnose=False,
        backtrace=False,
    )
