"""The documents generated from the settings table (nmfailover/docs.py): the checked-in copies are what the
table makes of them, and every setting is described once, in config.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmfailover import config, docs

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("path", sorted(docs.GENERATED), ids=str)
def test_the_checked_in_copy_is_generated(path: Path) -> None:
    current = (REPO / path).read_text(encoding="utf-8")
    assert docs.GENERATED[path](current) == current, (
        f"{path} differs from nmfailover/config.py's settings: run `{docs.COMMAND}` and commit the result"
    )


def test_every_setting_is_described_once() -> None:
    found = docs.settings()
    assert [s.name for s in found] == [
        next(n for n in docs._names(f) if n.startswith(config.PREFIX))
        for f in config.Settings.model_fields.values()
    ]
    missing = [s.name for s in found if not s.meaning]
    assert not missing, f"give these a Field(description=...) in nmfailover/config.py: {missing}"
    meanings = [s.meaning for s in found]
    assert len(set(meanings)) == len(meanings), "two settings share one description"
    for setting in found:
        assert setting.meaning.count("`") % 2 == 0, f"{setting.name}: unpaired backtick"


def test_each_document_carries_each_setting_once() -> None:
    env_file = docs.render_env_file()
    table = docs.render_readme_table()
    for setting in docs.settings():
        assert env_file.count(f"\n#{setting.name}=") == 1, setting.name
        assert table.count(f"\n| `{setting.name}` |") == 1, setting.name
    assert f"| `{config.ENV_FILE_VARIABLE}` | `{config.DEFAULT_ENV_FILE}` |" in table


@pytest.mark.parametrize(
    ("value", "shown", "written"),
    [
        (None, "none", ""),
        ((), "none", ""),
        (True, "true", "true"),
        (False, "false", "false"),
        (1.0, "1", "1"),
        (0.25, "0.25", "0.25"),
        (32768, "32768", "32768"),
        ((75, 95), "75, 95", "75,95"),
        (("auto",), "auto", "auto"),
        (Path("/etc/nmfailover/hooks.d"), "/etc/nmfailover/hooks.d", "/etc/nmfailover/hooks.d"),
        ("two words", "two words", '"two words"'),
        ('say "$HOME"', 'say "$HOME"', '"say \\"\\$HOME\\""'),
    ],
)
def test_default_values(value: object, shown: str, written: str) -> None:
    assert (docs.shown_default(value), docs.env_value(value)) == (shown, written)
    if isinstance(value, str):  # read back as systemd and load_settings() read it
        assert config.parse_env_file(f"A={written}\n") == {"A": value}


def test_a_changed_description_reaches_every_document(monkeypatch: pytest.MonkeyPatch) -> None:
    field = config.Settings.model_fields["rise_count"]
    monkeypatch.setattr(field, "description", "Rounds of `frobnication`.")
    assert "# Rounds of `frobnication`.\n#NMFAILOVER_RISE_COUNT=3\n" in docs.render_env_file()
    assert "| `NMFAILOVER_RISE_COUNT` | `3` | Rounds of `frobnication`. |" in docs.render_readme_table()
    from nmfailover import manpage

    assert "Rounds of \\fBfrobnication\\fR." in manpage.render_man()


def _copy(tmp_path: Path) -> Path:
    for path in docs.GENERATED:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    return tmp_path


def _docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nmfailover.docs", *args], capture_output=True, text=True, check=False
    )


def test_check_names_the_stale_file_and_the_command_fixes_it(tmp_path: Path) -> None:
    checkout = _copy(tmp_path)
    env_file = checkout / docs.ENV_FILE
    env_file.write_text(env_file.read_text().replace("Consecutive good rounds", "Consecutive failed rounds"))
    stale = _docs("--check", "--checkout", str(checkout))
    assert (stale.returncode, stale.stderr) == (
        1,
        f"packaging/nmfailover.env: differs from nmfailover/config.py; run `{docs.COMMAND}`\n",
    )
    fixed = _docs("--checkout", str(checkout))
    assert (fixed.returncode, fixed.stdout) == (0, "rewrote packaging/nmfailover.env\n")
    assert env_file.read_text() == docs.render_env_file()
    assert _docs("--check", "--checkout", str(checkout)).returncode == 0


def test_a_readme_without_the_markers_is_refused(tmp_path: Path) -> None:
    checkout = _copy(tmp_path)
    readme = checkout / docs.README
    readme.write_text(readme.read_text().replace(docs.TABLE_END, ""))
    done = _docs("--checkout", str(checkout))
    assert done.returncode == 1 and "marker lines" in done.stderr
