import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from loguru import logger

from nmfailover.log import setup_logging

HUMAN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?P<level>[A-Z]+) +(?P<message>.*)$")


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    yield
    logger.remove()


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        yield stream


def journal_stream_of(stream: TextIO) -> str:
    status = os.fstat(stream.fileno())
    return f"{status.st_dev}:{status.st_ino}"


def emit_all_levels() -> None:
    logger.trace("t")
    logger.debug("d")
    logger.info("i")
    logger.success("s")
    logger.warning("w <b>not a tag</b>")
    logger.error("e")
    logger.critical("c")


def read_lines(stream: TextIO) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        pytest.param(
            "TRACE", ["<7>t", "<7>d", "<6>i", "<6>s", "<4>w <b>not a tag</b>", "<3>e", "<2>c"], id="trace"
        ),
        pytest.param("INFO", ["<6>i", "<6>s", "<4>w <b>not a tag</b>", "<3>e", "<2>c"], id="info"),
        pytest.param("ERROR", ["<3>e", "<2>c"], id="error"),
    ],
)
def test_journal_mode(log_file: TextIO, level: str, expected: list[str]) -> None:
    setup_logging(level, environ={"JOURNAL_STREAM": journal_stream_of(log_file)}, stream=log_file)
    emit_all_levels()
    assert read_lines(log_file) == expected


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="no-journal-stream"),
        pytest.param({"JOURNAL_STREAM": "1:2"}, id="other-stream"),
        pytest.param({"JOURNAL_STREAM": "garbage"}, id="malformed"),
    ],
)
def test_human_mode(log_file: TextIO, environ: dict[str, str]) -> None:
    setup_logging("WARNING", environ=environ, stream=log_file)
    emit_all_levels()
    parsed = [HUMAN_LINE.match(line) for line in read_lines(log_file)]
    assert [(m["level"], m["message"]) for m in parsed if m] == [
        ("WARNING", "w <b>not a tag</b>"),
        ("ERROR", "e"),
        ("CRITICAL", "c"),
    ]
    assert all(parsed)


def test_stream_without_file_descriptor_is_human() -> None:
    stream = io.StringIO()
    setup_logging("INFO", environ={"JOURNAL_STREAM": "1:2"}, stream=stream)
    logger.info("hello")
    match = HUMAN_LINE.match(stream.getvalue().rstrip("\n"))
    assert match and match["message"] == "hello"
    assert "\x1b[" not in stream.getvalue()  # not a terminal: no colour codes


def test_replaces_previous_handlers(log_file: TextIO, tmp_path: Path) -> None:
    with open(tmp_path / "first", "w+", encoding="utf-8") as first:
        setup_logging("INFO", environ={}, stream=first)
        setup_logging("INFO", environ={"JOURNAL_STREAM": journal_stream_of(log_file)}, stream=log_file)
        logger.info("once")
        assert read_lines(first) == []
    assert read_lines(log_file) == ["<6>once"]


def test_exception_without_variable_values(log_file: TextIO) -> None:
    setup_logging("INFO", environ={"JOURNAL_STREAM": journal_stream_of(log_file)}, stream=log_file)
    secret = "hunter2"
    try:
        raise RuntimeError("boom" + secret[:0])  # diagnose=True would print secret's value here
    except RuntimeError:
        logger.exception("failed {}", len(secret))
    lines = read_lines(log_file)
    assert lines[0] == "<3>failed 7"
    assert "RuntimeError: boom" in lines
    assert not any("hunter2" in line for line in lines)


def test_default_stream_is_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", environ={})
    logger.info("to stderr")
    out, err = capfd.readouterr()
    assert out == ""
    assert "to stderr" in err
