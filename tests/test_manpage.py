"""nmfailover(8) and the shell completions: generated exactly as the .deb's build does it, checked by groff and
man for warnings, for completeness against the parser and the settings, and the completions run in bash and
zsh."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmfailover import cli, config, manpage, system_files


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        # CI installs everything (scripts/bootstrap): a skip there would hide a missing check.
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is not installed")
        pytest.skip(f"{tool} is not installed (apt-get install -y man-db groff-base zsh)")
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("man")
    done = subprocess.run(
        [sys.executable, "-m", "nmfailover.manpage", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(out / name) for name in ("nmfailover.8", "nmfailover.bash", "_nmfailover")
    ]
    return out


def rendered(page: Path, width: int = 200) -> str:
    """The page as man shows it, wide enough that no name is split."""
    done = subprocess.run(
        [_need("man"), "-l", str(page)],
        capture_output=True,
        text=True,
        check=True,
        # LC_ALL=C: plain ASCII hyphens and quotes, whatever the locale would pick.
        env={**os.environ, "MANWIDTH": str(width), "LC_ALL": "C", "MANPAGER": "cat", "PAGER": "cat"},
    )
    return re.sub(r".\x08", "", done.stdout)


# -- the man page ------------------------------------------------------------------------------------


def test_groff_finds_nothing_to_warn_about(generated: Path) -> None:
    page = generated / "nmfailover.8"
    done = subprocess.run(
        [_need("groff"), "-man", "-ww", "-z", str(page)], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")
    for width in ("80", "60"):
        shown = subprocess.run(
            [_need("man"), "--warnings", "-l", str(page)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "MANWIDTH": width, "MANPAGER": "cat", "PAGER": "cat"},
        )
        assert (shown.returncode, shown.stderr) == (0, ""), width


def test_every_command_option_variable_and_exit_code_is_in_the_page(generated: Path) -> None:
    text = rendered(generated / "nmfailover.8")
    parser = cli.build_parser()
    for command in manpage.commands(parser):
        assert re.search(rf"^ +nmfailover {re.escape(command.name)}\b", text, re.MULTILINE), command.name
        for option in command.optionals:
            for flag in option.flags:
                assert re.search(rf"^ +{re.escape(flag)}\b", text, re.MULTILINE), f"{command.name} {flag}"
    for name in sorted(config._known_variables() | config.EVENT_VARIABLES):
        assert re.search(rf"\b{name}\b", text), name
    environment = text.split("\nENVIRONMENT\n")[1].split("\nFILES\n")[0]
    for variable in manpage.variables():
        entry = environment.split(f"\n       {variable.name}\n")[1].split("\n\n")[0]
        if variable.default:
            # Compared without white space: a long default may break after a slash.
            assert "".join(f"Default: {variable.default}.".split()) in "".join(entry.split()), variable.name
        else:
            assert "Required." in entry, variable.name
    status = text.split("\nEXIT STATUS\n")[1]
    codes = [v for k, v in vars(cli).items() if k.startswith("EXIT_") and isinstance(v, int)]
    for code in codes:
        assert re.search(rf"^ +{code} ", status, re.MULTILINE), code
    assert "nmfailover 0." in text.splitlines()[-1] and "2023-11-14" in text.splitlines()[-1]


def test_defaults_come_from_the_settings() -> None:
    found = {v.name: v for v in manpage.variables()}
    assert found["NMFAILOVER_UPLINKS"].default == "none"  # none named: found at run time
    assert found["NMFAILOVER_FAIL_COUNT"].default == str(config.Settings.model_fields["fail_count"].default)
    assert found["NMFAILOVER_PROBE_TIMEOUT"].default == "1"
    assert found["NMFAILOVER_HOOKS_DIR"].default == "/etc/nmfailover/hooks.d"
    assert found["NMFAILOVER_WEBHOOK_URL"].default == "none"
    assert found["NMFAILOVER_MANAGE_AUTOCONNECT_PRIORITY"].default == "true"
    assert found["NMFAILOVER_PROBE_URLS"].default.startswith(
        "http://connectivitycheck.gstatic.com/generate_204, "
    )
    assert found["NMFAILOVER_ACTIVE_INTERVAL"].aliases == ("PRIMARY_CHECK_INTERVAL_IN_SECONDS",)


def test_every_variable_has_a_meaning_of_its_own(generated: Path) -> None:
    # Each entry's paragraph is its own setting's description, never a neighbour's (issue 19: RISE_COUNT
    # read "Consecutive failed rounds before an uplink is down").
    environment = rendered(generated / "nmfailover.8").split("\nENVIRONMENT\n")[1].split("\nFILES\n")[0]
    paragraphs = {}
    for variable in manpage.variables():
        entry = environment.split(f"\n       {variable.name}\n")[1].split("\n\n")[0]
        paragraphs[variable.name] = " ".join(entry.split()).split(" Default: ")[0]
        expected = " ".join(variable.full_meaning.replace("`", "").split())
        assert paragraphs[variable.name] == expected, variable.name
    assert len(set(paragraphs.values())) == len(paragraphs)
    assert paragraphs["NMFAILOVER_RISE_COUNT"] == "Consecutive good rounds before a down uplink is up again."


def test_the_files_section_lists_every_file_install_system_files_writes(generated: Path) -> None:
    files = rendered(generated / "nmfailover.8").split("\nFILES")[1].split("\nEXIT STATUS\n")[0]
    for spec in system_files.SYSTEM_FILES:
        assert f"\n       {spec.target}\n" in files, spec.target


def test_literals_are_bold() -> None:
    page = manpage.render_man()
    assert "or \\fBauto\\fR: every active connection" in page


def test_a_new_command_shows_up_everywhere() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    frob = commands.add_parser("frobnicate", help="frob the widget", description="Frob the widget. Now.")
    frob.add_argument("--widget", metavar="DIR", help="which one")
    page = manpage.render_man(parser)
    assert "\\fBnmfailover frobnicate\\fR [\\fB\\-\\-widget\\fR\\~\\fIDIR\\fR]" in page
    assert ".SS frobnicate" in page
    assert "frobnicate:--widget" in manpage.render_bash(parser)
    assert "'frobnicate:frob the widget'" in manpage.render_zsh(parser)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a-b", "a\\-b"),
        ("back\\slash", "back\\eslash"),
        (".starts with a dot", "\\&.starts with a dot"),
        ("'quote first", "\\&'quote first"),
        ("em — dash", "em \\[u2014] dash"),
        (
            "/a/b " * 2 + "/usr/local/share/bash-completion/x",
            "/a/b /a/b /\\:usr/\\:local/\\:share/\\:bash\\-completion/\\:x",
        ),
    ],
)
def test_roff_escaping(text: str, line: str) -> None:
    assert manpage.roff(text) == line


def test_output_is_the_same_every_time(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    outputs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        subprocess.run(
            [sys.executable, "-m", "nmfailover.manpage", "--out", str(tmp_path / run)], env=env, check=True
        )
        outputs.append({p.name: p.read_bytes() for p in (tmp_path / run).iterdir()})
    assert outputs[0] == outputs[1]
    assert outputs[0]["nmfailover.8"].startswith(b'.TH NMFAILOVER 8 "" "nmfailover ')


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ((), "--out"),
        (("--out",), "--out"),
        (("--out", "/nonexistent"), "--out"),
        (("--out", "/tmp", "--bogus"), "--bogus"),
    ],
)
def test_bad_arguments(argv: tuple[str, ...], names: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nmfailover.manpage", *argv], capture_output=True, text=True, check=False
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and names in lines[0], done.stderr


# -- bash --------------------------------------------------------------------------------------------


def bash_complete(script: Path, *words: str) -> list[str]:
    # As bash itself calls it for `nmfailover WORDS...<TAB>`: the last word is the one being completed.
    program = (
        f"source {script}; COMP_WORDS=(nmfailover {' '.join(repr(w) for w in words)}); "
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _nmfailover; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run([_need("bash"), "-c", program], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    return done.stdout.split()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("st",), ["status"]),
        (("",), ["-h", "--help", "--version", *(c.name for c in manpage.commands())]),
        (("do",), ["doctor"]),
        (("install",), ["install-system-files"]),
        (("test-failover", "--"), ["--help", "--seconds", "--end"]),
        (("install-system-files", "--r"), ["--root", "--remove"]),
        (("prefer", "b"), ["backup"]),
        (("prefer", "--c"), ["--clear"]),
        (("test-failover", "--seconds", ""), []),
        (("check", "--json", "--"), ["--help", "--json"]),
    ],
)
def test_bash_completes(generated: Path, words: tuple[str, ...], expected: list[str]) -> None:
    assert bash_complete(generated / "nmfailover.bash", *words) == expected


def test_bash_completes_interfaces(generated: Path) -> None:
    assert "lo" in bash_complete(generated / "nmfailover.bash", "recheck", "--interface", "l")


def test_bash_completes_directories_for_root(generated: Path, tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "file").write_text("")
    assert bash_complete(generated / "nmfailover.bash", "doctor", "--root", f"{tmp_path}/") == [
        f"{tmp_path}/image"
    ]


# -- zsh ---------------------------------------------------------------------------------------------

# Types WORDS and a Tab into an interactive zsh on a pseudo-terminal, with compadd recording what the
# completion offers: the real completion system, not a guess at how it calls the function.
_ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='> '; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z 'compadd () { builtin compadd -O __hits "$@"; builtin print -rl -- $__hits >> $2; builtin compadd "$@" }'
zpty -w z 'bindkey "^I" complete-word'
zpty -w -n z "$3"$'\t'
for i in {1..50}; do [[ -s $2 ]] && break; sleep 0.1; done
sleep 0.3
zpty -d z
"""


def zsh_complete(directory: Path, tmp_path: Path, line: str) -> list[str]:
    hits = tmp_path / "hits"
    hits.unlink(missing_ok=True)
    driver = tmp_path / "driver.zsh"
    driver.write_text(_ZSH_DRIVER.replace("$2", str(hits)))
    subprocess.run(
        [_need("zsh"), "-f", str(driver), str(directory), str(hits), line],
        check=True,
        timeout=30,
        capture_output=True,
    )
    return sorted(set(hits.read_text().split())) if hits.exists() else []


def test_zsh_file_parses(generated: Path) -> None:
    done = subprocess.run(
        [_need("zsh"), "-n", str(generated / "_nmfailover")], capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("nmfailover st", ["status"]),
        ("nmfailover test-failover --s", ["--seconds"]),
        ("nmfailover install-system-files --r", ["--remove", "--root"]),
        ("nmfailover prefer ba", ["backup"]),
    ],
)
def test_zsh_completes(generated: Path, tmp_path: Path, line: str, expected: list[str]) -> None:
    assert zsh_complete(generated, tmp_path, line) == expected
