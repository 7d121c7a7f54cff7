"""nmfailover(8) and the bash and zsh completions, generated from the argument parser and the settings.

    python -m nmfailover.manpage --out DIR   writes DIR/nmfailover.8, DIR/nmfailover.bash, DIR/_nmfailover

Commands and options come from commandline.build_parser(), the variables and their defaults from
config.Settings' fields (their defaults and descriptions, through docs.settings()), the files from
system_files, so none of them can drift from the code. Not argparse-manpage or shtab (both on PyPI and
well kept): they would generate the command and option lists, the smaller part; the ENVIRONMENT, FILES and
EXIT STATUS sections come from pydantic and this package, which neither knows. A dependency of the .deb's
build for that part is not worth it.

Output is deterministic (no date unless SOURCE_DATE_EPOCH is set), so package builds are reproducible.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, config, docs, system_files
from .commandline import build_parser
from .engine import role_name

OUTPUTS = {"man": "nmfailover.8", "bash": "nmfailover.bash", "zsh": "_nmfailover"}
# How a value is completed, by the option's metavar.
_DIRECTORY_METAVARS = frozenset({"DIR"})
_INTERFACE_METAVARS = frozenset({"IF"})
_UPLINK_METAVARS = frozenset({"UPLINK"})
ROLES = tuple(role_name(i) for i in range(3))


# -- what the parser holds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # empty for a positional
    metavar: str | None  # None: takes no value
    help: str
    required: bool
    excludes: tuple[str, ...]  # flags it cannot be combined with

    @property
    def name(self) -> str:
        return self.flags[-1] if self.flags else self.metavar or ""


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    description: str
    options: tuple[Option, ...]  # -h/--help left out: every command has it

    @property
    def positionals(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if not o.flags)

    @property
    def optionals(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.flags)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    # argparse has no public way to list subcommands; these attributes are stable since Python 3.2.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError("the parser has no subcommands")


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    formatter = parser._get_formatter()
    exclusive: dict[str, tuple[str, ...]] = {}
    for group in parser._mutually_exclusive_groups:
        flags = [f for a in group._group_actions for f in a.option_strings]
        for action in group._group_actions:
            exclusive[action.dest] = tuple(f for f in flags if f not in action.option_strings)
    found = []
    for action in parser._actions:
        if (
            isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
            or action.help == argparse.SUPPRESS
        ):
            continue
        takes_value = action.nargs != 0
        metavar = (action.metavar or action.dest.upper()) if takes_value else None
        found.append(
            Option(
                flags=tuple(action.option_strings),
                metavar=str(metavar) if metavar is not None else None,
                help=formatter._expand_help(action) if action.help else "",
                required=bool(action.required) and action.nargs not in ("?", "*"),
                excludes=exclusive.get(action.dest, ()),
            )
        )
    return tuple(found)


def commands(parser: argparse.ArgumentParser | None = None) -> list[Command]:
    parser = parser or build_parser()
    action = _subparsers(parser)
    summaries = {a.dest: a.help or "" for a in action._choices_actions}
    return [
        Command(name, summaries.get(name, ""), sub.description or summaries.get(name, ""), _options(sub))
        for name, sub in action.choices.items()
    ]


def variables() -> list[docs.SettingDoc]:
    return docs.settings()


# -- roff --------------------------------------------------------------------------------------------


def roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, anything not ASCII as a named glyph."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    # Paths and URLs longer than a narrow terminal's line may break after a slash (\: marks the place).
    text = re.sub(r"\S{30,}", lambda m: m.group().replace("/", "/\\:"), text)
    # A line starting with . or ' would be a request; \& in front makes it text.
    return "\\&" + text if text.startswith((".", "'")) else text


def _bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def _marked(text: str) -> str:
    """A roff line of text whose `literal` parts (in backticks, as in the settings' descriptions) are bold."""
    parts = text.split("`")
    if len(parts) % 2 == 0:
        raise ValueError(f"unpaired backtick in {text!r}")
    words = [_bold(part) if index % 2 else roff(part) for index, part in enumerate(parts)]
    # Only the line's start can be taken for a request: a later piece needs no \& in front.
    return words[0] + "".join(word.removeprefix("\\&") for word in words[1:])


def _synopsis_item(option: Option) -> str:
    # \~ keeps an option and its value on one line.
    word = _bold(option.flags[-1]) if option.flags else _italic(option.metavar or "")
    if option.flags and option.metavar:
        word += "\\~" + _italic(option.metavar)
    return word


def _synopsis(command: Command) -> str:
    parts = [_bold(f"nmfailover {command.name}")]
    done: set[str] = set()
    for option in (*command.optionals, *command.positionals):
        if option.name in done:
            continue
        group = [option] + [o for o in command.options if o.flags and o.flags[-1] in option.excludes]
        done.update(o.name for o in group)
        text = " | ".join(_synopsis_item(o) for o in group)
        parts.append(text if option.required else f"[{text}]")
    return " ".join(parts)


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".") if text else ""


def render_man(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    found = commands(parser)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    date = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%d")
        if epoch.isdigit()
        else ""
    )
    out = [
        f'.TH NMFAILOVER 8 "{date}" "nmfailover {__version__}" "System Administration"',
        '.\\" Generated by `python -m nmfailover.manpage` from the argument parser and the settings.',
        ".nh",
        ".ad l",
        ".SH NAME",
        "nmfailover \\- uplink failover for NetworkManager",
        ".SH SYNOPSIS",
    ]
    # A hanging indent: a synopsis too long for one line continues indented under the command.
    for line in [
        *(_synopsis(c) for c in found),
        f"{_bold('nmfailover')} [{_bold('--version')} | {_bold('--help')}]",
    ]:
        out += [".in +4n", ".ti -4n", line, ".in -4n"]
    out += [
        ".SH DESCRIPTION",
        roff(
            "nmfailover keeps the default route on the most preferred uplink that really reaches the "
            "internet. It probes every uplink through that uplink's own device and DNS, and moves the "
            "default route by changing NetworkManager's route metrics at run time (Reapply): no "
            "connection is restarted and nothing is written to the saved profiles."
        ),
        ".PP",
        roff(
            "The uplinks are NetworkManager profiles named in NMFAILOVER_UPLINKS, most preferred first. "
            "Failover happens after NMFAILOVER_FAIL_COUNT failed probe rounds; traffic moves back after "
            "NMFAILOVER_RISE_COUNT good rounds and the failback hold-down. The daemon is controlled over "
            "D-Bus (net.nmfailover.Failover1 on the system bus), which the status, recheck, "
            "test-failover and prefer commands use."
        ),
        ".SH COMMANDS",
    ]
    for command in found:
        out += [f".SS {command.name}", ".in +4n", ".ti -4n", _synopsis(command), ".in -4n"]
        out += [".PP", roff(_sentence(command.description))]
        for option in command.options:
            if not option.flags and not option.help:
                continue  # a positional the description explains
            out += [".TP", _synopsis_item(option), roff(_sentence(option.help))]
            if option.excludes:
                out.append(roff(f"Not together with {', '.join(option.excludes)}."))
    out += [".SH OPTIONS"]
    for option in _options(parser):
        out += [".TP", _synopsis_item(option), roff(_sentence(option.help or "print the version and exit"))]
    out += [
        ".TP",
        f"{_bold('-h')}, {_bold('--help')}",
        roff("Print help and exit; after a command: its help."),
    ]
    out += _environment()
    out += _files()
    out += [".SH EXIT STATUS"]
    for status in docs.EXIT_STATUS:
        out += [".TP", f"\\fB{status.code}\\fR", _marked(status.text())]
    out += [
        ".SH SEE ALSO",
        "\\fBNetworkManager\\fR(8), \\fBnmcli\\fR(1), \\fBsystemctl\\fR(1), \\fBsystemd.exec\\fR(5), "
        "\\fBbusctl\\fR(1)",
    ]
    return "\n".join(out) + "\n"


def _environment() -> list[str]:
    out = [
        ".SH ENVIRONMENT",
        roff(
            "Settings are read once at start, from the environment and from the env file (systemd's "
            f"EnvironmentFile= grammar), the environment winning. Unknown {config.PREFIX}* variables "
            "are refused, so a typo never falls back to a default."
        ),
    ]
    for variable in variables():
        out += [".TP", _bold(variable.name), _marked(_sentence(variable.full_meaning))]
        out.append(roff(f"Default: {variable.default}."))
    out += [
        ".TP",
        _bold(config.ENV_FILE_VARIABLE),
        roff(f"{config.ENV_FILE_MEANING} Default: {config.DEFAULT_ENV_FILE}."),
        ".TP",
        _bold("DBUS_SYSTEM_BUS_ADDRESS"),
        roff(f"The system bus. Default: unix:path={system_files.DEFAULT_SYSTEM_BUS_SOCKET}."),
        ".TP",
        _bold("RUNTIME_DIRECTORY"),
        roff(
            "Where each profile's own autoconnect-priority is remembered until a clean stop puts it back "
            "(set by systemd's RuntimeDirectory=). Default: /run/nmfailover."
        ),
        ".TP",
        _bold("STATE_DIRECTORY"),
        roff(
            "Where the metered uplinks' bytes this month and in the last outage are kept "
            "(set by systemd's StateDirectory=). Default: /var/lib/nmfailover."
        ),
        ".PP",
        roff(
            "The daemon sets these for switch hooks and the failback guard; they are not settings: "
            + ", ".join(sorted(config.EVENT_VARIABLES))
            + "."
        ),
    ]
    return [line for line in out if line]


def _files() -> list[str]:
    out = [".SH FILES"]
    for spec in system_files.SYSTEM_FILES:
        extra = " (with install-system-files --non-root)" if spec.non_root else ""
        out += [".TP", _italic(str(spec.target)), roff(_sentence(spec.what + extra))]
    out += [
        ".TP",
        _italic(str(system_files.MANIFEST)),
        roff(
            "What install-system-files wrote, with digests, so that --remove takes out only unchanged files."
        ),
        ".PP",
        roff(
            f"The Debian package puts the unit in /lib/systemd/system, the dispatcher hook in "
            f"{system_files.PACKAGED_DISPATCHER_HOOK.parent} and the D-Bus policy in "
            f"{system_files.PACKAGED_DBUS_POLICY.parent}."
        ),
    ]
    return out


# -- completion --------------------------------------------------------------------------------------


def _value_kind(metavar: str | None) -> str:
    if metavar in _DIRECTORY_METAVARS:
        return "directory"
    if metavar in _INTERFACE_METAVARS:
        return "interface"
    if metavar in _UPLINK_METAVARS:
        return "uplink"
    return "any"


def _sh_words(words: Sequence[str]) -> str:
    # Flags, command names and role names only: plain words, but quote anything else to stay safe.
    for word in words:
        if not re.fullmatch(r"[A-Za-z0-9_.:=+-]+", word):
            raise ValueError(f"cannot put {word!r} in a completion word list")
    return " ".join(words)


def render_bash(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    found = commands(parser)
    top = ["-h", "--help", *(f for o in _options(parser) for f in o.flags), *(c.name for c in found)]
    valued: dict[str, list[str]] = {}  # case pattern "command:--option" -> its value kind
    lines = [
        "# bash completion for nmfailover; generated by `python -m nmfailover.manpage` from its parser.",
        "_nmfailover() {",
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} command= i",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        case ${COMP_WORDS[i]} in",
        "            -*) ;;",
        "            *) command=${COMP_WORDS[i]}; break ;;",
        "        esac",
        "    done",
        "    if [[ -z $command ]]; then",
        f'        COMPREPLY=($(compgen -W "{_sh_words(top)}" -- "$cur"))',
        "        return",
        "    fi",
    ]
    for command in found:
        for option in command.optionals:
            if option.metavar:
                for flag in option.flags:
                    valued.setdefault(_value_kind(option.metavar), []).append(f"{command.name}:{flag}")
    if valued:
        lines.append("    case $command:$prev in")
        for kind, patterns in valued.items():
            lines.append(f"        {'|'.join(_sh_words([p]) for p in patterns)})")
            lines.append(f"            {_bash_values(kind)}")
            lines.append("            return ;;")
        lines.append("    esac")
    lines.append("    case $command in")
    for command in found:
        flags = ["-h", "--help", *(f for o in command.optionals for f in o.flags)]
        positional = next((p for p in command.positionals), None)
        lines.append(f"        {_sh_words([command.name])})")
        if positional is not None and positional.metavar:
            lines.append("            if [[ $cur != -* ]]; then")
            lines.append(f"                {_bash_values(_value_kind(positional.metavar))}")
            lines.append("                return")
            lines.append("            fi")
        lines.append(f'            COMPREPLY=($(compgen -W "{_sh_words(flags)}" -- "$cur")) ;;')
    lines += ["    esac", "}", "complete -F _nmfailover nmfailover", ""]
    return "\n".join(lines)


def _bash_values(kind: str) -> str:
    if kind == "directory":
        return 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur"))'
    if kind == "interface":
        return 'COMPREPLY=($(compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur"))'
    if kind == "uplink":
        return f'COMPREPLY=($(compgen -W "{_sh_words(ROLES)}" -- "$cur"))'
    return "COMPREPLY=()"


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_description(text: str) -> str:
    # Inside [...] of an _arguments spec a ] ends the description and a : ends the spec part.
    return re.sub(r"([\[\]:\\])", r"\\\1", text.replace("\n", " "))


def _zsh_action(kind: str, metavar: str) -> str:
    message = _zsh_description(metavar.lower())
    actions = {
        "directory": "_files -/",
        "interface": "_net_interfaces",
        "uplink": f"({' '.join(ROLES)})",
    }
    return f"{message}:{actions.get(kind, ' ')}"


_ZSH_HELP = _zsh_quote("(- *)") + "{-h,--help}" + _zsh_quote("[show help]")


def _zsh_option_specs(options: Sequence[Option]) -> Iterator[str]:
    position = 0
    for option in options:
        if not option.flags:
            position += 1
            optional = ":" if not option.required else ""
            kind = _value_kind(option.metavar)
            yield _zsh_quote(f"{position}:{optional}{_zsh_action(kind, option.metavar or '')}")
            continue
        exclude = f"({' '.join(option.excludes)})" if option.excludes else ""
        value = f":{_zsh_action(_value_kind(option.metavar), option.metavar)}" if option.metavar else ""
        for flag in option.flags:
            yield _zsh_quote(f"{exclude}{flag}[{_zsh_description(option.help)}]{value}")


def render_zsh(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or build_parser()
    found = commands(parser)
    lines = [
        "#compdef nmfailover",
        "# zsh completion for nmfailover; generated by `python -m nmfailover.manpage` from its parser.",
        "",
        "_nmfailover() {",
        "    local curcontext=$curcontext state line",
        "    typeset -A opt_args",
        "    _arguments -C \\",
    ]
    lines += [f"        {spec} \\" for spec in (_ZSH_HELP, *_zsh_option_specs(_options(parser)))]
    lines += [
        "        '1: :->command' \\",
        "        '*:: :->arguments' && return",
        "    case $state in",
        "        command)",
        "            local -a commands",
        "            commands=(",
    ]
    for command in found:
        lines.append(
            f"                {_zsh_quote(command.name + ':' + command.summary.replace(chr(10), ' '))}"
        )
    lines += [
        "            )",
        "            _describe -t commands 'nmfailover command' commands ;;",
        "        arguments)",
        "            curcontext=${curcontext%:*:*}:nmfailover-$line[1]:",
        "            case $line[1] in",
    ]
    for command in found:
        specs = [_ZSH_HELP, *_zsh_option_specs(command.options)]
        lines.append(f"                {command.name})")
        lines.append("                    _arguments \\")
        lines += [f"                        {spec} \\" for spec in specs[:-1]]
        lines.append(f"                        {specs[-1]} ;;")
    lines += ["            esac ;;", "    esac", "}", "", '_nmfailover "$@"', ""]
    return "\n".join(lines)


def render(kind: str) -> str:
    """One of OUTPUTS' kinds: "man", "bash" or "zsh"."""
    renderers = {"man": render_man, "bash": render_bash, "zsh": render_zsh}
    return renderers[kind]()


def write_all(out: Path) -> list[Path]:
    written = []
    for kind, name in OUTPUTS.items():
        path = out / name
        path.write_text(render(kind), encoding="utf-8")
        written.append(path)
    return written


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line naming the argument, as everywhere in nmfailover, not argparse's usage block.
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m nmfailover.manpage",
        description=f"Write {', '.join(OUTPUTS.values())} into DIR.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="an existing directory")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        print(f"{parser.prog}: --out: not a directory: {str(args.out)!r}", file=sys.stderr)
        return 2
    try:
        for path in write_all(args.out):
            print(path)
    except OSError as exc:
        print(f"{parser.prog}: --out: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
