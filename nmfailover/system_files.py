"""The files outside the Python package that a working installation needs, and putting them in place.

The .deb installs them from packaging/ and dispatcher.d/; a pip or pipx install gets the same files as
package data (nmfailover/data/, symlinks to those, so there is one copy) and `nmfailover
install-system-files` writes them under /etc, with the unit's ExecStart pointing at this installation's
console script. What it wrote is recorded with a digest in MANIFEST, so that `--remove` takes out exactly
those files, and only while nobody changed them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from . import __version__
from .bus import DEFAULT_SYSTEM_BUS_SOCKET as DEFAULT_SYSTEM_BUS_SOCKET  # the man page names it
from .errors import NmfailoverError

UNIT_NAME = "nmfailover.service"
DBUS_POLICY = PurePosixPath("/etc/dbus-1/system.d/net.nmfailover.Failover1.conf")
UNIT = PurePosixPath("/etc/systemd/system") / UNIT_NAME
DISPATCHER_HOOK = PurePosixPath("/etc/NetworkManager/dispatcher.d/90-nmfailover")
ENV_FILE = PurePosixPath("/etc/nmfailover/nmfailover.env")
MANPAGE = PurePosixPath("/usr/local/share/man/man8/nmfailover.8")
BASH_COMPLETION = PurePosixPath("/usr/local/share/bash-completion/completions/nmfailover")
ZSH_COMPLETION = PurePosixPath("/usr/local/share/zsh/site-functions/_nmfailover")
POLKIT_RULE = PurePosixPath("/etc/polkit-1/rules.d/50-nmfailover.rules")
POLKIT_ACTIONS = PurePosixPath("/usr/share/polkit-1/actions/net.nmfailover.policy")  # read from nowhere else
POLKIT_DESKTOP_RULE = PurePosixPath("/etc/polkit-1/rules.d/60-nmfailover-desktop.rules")
NON_ROOT_DROP_IN = PurePosixPath("/etc/systemd/system/nmfailover.service.d/non-root.conf")
# CAP_NET_ADMIN, for kernel WireGuard tunnels outside NetworkManager; tunnels.py's error names the file.
KERNEL_WIREGUARD_DROP_IN = NON_ROOT_DROP_IN.parent / "kernel-wireguard.conf"
NOTIFY_USER_UNIT = PurePosixPath("/etc/systemd/user/nmfailover-notify.service")
NOTIFY_AUTOSTART = PurePosixPath("/etc/xdg/autostart/nmfailover-notify.desktop")
PACKAGED_EXECUTABLE = "/opt/nmfailover/bin/nmfailover"  # what the shipped files run; a pip install differs
MANIFEST = PurePosixPath("/var/lib/nmfailover/system-files.json")
# Where the .deb puts the same files: doctor accepts either.
PACKAGED_DBUS_POLICY = PurePosixPath("/usr/share/dbus-1/system.d/net.nmfailover.Failover1.conf")
PACKAGED_DISPATCHER_HOOK = PurePosixPath("/usr/lib/NetworkManager/dispatcher.d/90-nmfailover")
UNIT_DIRS = tuple(
    PurePosixPath(d)
    for d in ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
)


@dataclass(frozen=True)
class Hiding:
    """A sandbox setting of the unit that hides directories from the service: a unit whose executable or
    interpreter lives there could not even start, so for such an installation it is loosened."""

    setting: str  # as the shipped unit has it
    loosened: str
    dirs: tuple[PurePosixPath, ...]
    why: str


HIDINGS = (
    Hiding(
        "ProtectHome=yes",
        "ProtectHome=read-only",
        (PurePosixPath("/home"), PurePosixPath("/root"), PurePosixPath("/run/user")),
        "a home directory, which ProtectHome=yes would hide",
    ),
    Hiding(
        "PrivateTmp=yes",
        "PrivateTmp=no",
        (PurePosixPath("/tmp"), PurePosixPath("/var/tmp")),
        "/tmp or /var/tmp, which PrivateTmp=yes would replace with an empty one",
    ),
)
# systemd takes these in an unquoted ExecStart path as they are; anything else is quoted and escaped.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._+@-]+")


# The man page and shell completions of a kind ("man", "bash", "zsh"), from manpage.py. It documents the
# command line, which uses this module: the command line hands it in, so that nothing here imports it.
Generate = Callable[[str], str]


class SystemFilesError(NmfailoverError):
    """The system files cannot be installed or removed as asked; the message says why and what to do."""


@dataclass(frozen=True)
class SystemFile:
    target: PurePosixPath  # absolute, as on the running system
    what: str
    mode: int
    render: Callable[[Path], bytes]  # the content, given the console script the unit is to run
    settings: bool = False  # the user's settings: written only where there is none, never replaced
    non_root: bool = False  # only with --non-root
    kernel_wireguard: bool = False  # only with --kernel-wireguard
    generated: str | None = None  # made by `generate` (the man page and completions), not by `render`

    def content(self, executable: Path, generate: Generate) -> bytes:
        return generate(self.generated).encode() if self.generated is not None else self.render(executable)


def data_file(name: str) -> bytes:
    """A file shipped in nmfailover/data/; SystemFilesError (not a traceback) if the build left it out."""
    try:
        return (resources.files("nmfailover") / "data" / name).read_bytes()
    except OSError as exc:
        raise SystemFilesError(
            f"nmfailover/data/{name} is missing from this installation ({exc.strerror}): it was built "
            "without its system files; reinstall nmfailover from PyPI or a full checkout"
        ) from None


def _shipped(name: str) -> Callable[[Path], bytes]:
    return lambda _executable: data_file(name)


def _running(name: str) -> Callable[[Path], bytes]:
    """A shipped file whose command is the package's executable, pointed at this installation's."""

    def render(executable: Path) -> bytes:
        text = data_file(name).decode()
        if PACKAGED_EXECUTABLE not in text:
            raise SystemFilesError(f"the shipped {name} does not run {PACKAGED_EXECUTABLE}")
        return text.replace(PACKAGED_EXECUTABLE, systemd_quote(str(executable))).encode()

    return render


def _never(_executable: Path) -> bytes:
    raise SystemFilesError("no longer shipped")


def render_unit(executable: Path) -> bytes:
    """The shipped unit with ExecStart running `executable`, and the sandbox loosened where it must be."""
    text = data_file("nmfailover.service").decode()
    exec_lines = re.findall(r"^ExecStart=.*$", text, re.MULTILINE)
    if len(exec_lines) != 1:
        raise SystemFilesError(f"the shipped {UNIT_NAME} has {len(exec_lines)} ExecStart= lines, expected 1")
    text = text.replace(exec_lines[0], f"ExecStart={systemd_quote(str(executable))} run")
    # The .deb's documentation path does not exist for a pip install; the man page comes with this one.
    text = re.sub(r"^Documentation=.*$", "Documentation=man:nmfailover(8)", text, flags=re.MULTILINE)
    for hiding in sandbox_hidings(text, installation_paths(executable)):
        text = re.sub(
            rf"^{re.escape(hiding.setting)}$",
            f"# This installation lives under {hiding.why}.\n{hiding.loosened}",
            text,
            flags=re.MULTILINE,
        )
    header = (
        f"# Written by `nmfailover install-system-files` (nmfailover {__version__}) for the installation at\n"
        f"# {executable}. Put changes in a drop-in (systemctl edit nmfailover): `nmfailover\n"
        "# install-system-files --remove` removes this file only while it is unchanged.\n"
    )
    return (header + text).encode()


def systemd_quote(path: str) -> str:
    """`path` as the executable of an ExecStart= line: quoted and escaped when systemd needs that."""
    if any(not c.isprintable() for c in path):
        raise SystemFilesError(f"the executable's path {path!r} has characters a unit file cannot hold")
    if _PLAIN_PATH.fullmatch(path):
        return path
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _under(path: PurePosixPath, parents: Sequence[PurePosixPath]) -> bool:
    return any(path == parent or parent in path.parents for parent in parents)


def sandbox_hidings(unit_text: str, paths: Sequence[PurePosixPath]) -> list[Hiding]:
    """The settings in `unit_text` (the last of each name counts, as for systemd) that hide one of `paths`."""
    found = []
    for hiding in HIDINGS:
        name = hiding.setting.split("=")[0]
        values = re.findall(rf"^\s*{name}\s*=\s*(.*?)\s*$", unit_text, re.MULTILINE)
        if values and f"{name}={values[-1]}" == hiding.setting and any(_under(p, hiding.dirs) for p in paths):
            found.append(hiding)
    return found


def installation_paths(executable: Path) -> list[PurePosixPath]:
    """Everything the service has to see to start: the script, its interpreter, the library, the package."""
    paths = [Path(executable), Path(os.path.realpath(executable)), Path(sys.executable)]
    paths += [Path(os.path.realpath(sys.executable)), Path(sys.prefix), Path(sys.base_prefix)]
    paths.append(Path(__file__).resolve().parent)
    return [PurePosixPath(p) for p in paths]


def find_executable() -> Path:
    """This installation's console script: next to the running interpreter (a venv, pipx), else where
    pip put scripts for this interpreter (a system-wide or --user install)."""
    candidates = [Path(sys.executable).parent / "nmfailover"]
    for scheme in (None, f"{os.name}_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        candidates.append(Path(scripts) / "nmfailover")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SystemFilesError(
        f"no nmfailover console script next to {sys.executable} or in {candidates[1].parent}: install "
        "the package with pip or pipx (not just run it from a checkout), then run its nmfailover"
    )


SYSTEM_FILES: tuple[SystemFile, ...] = (
    SystemFile(DBUS_POLICY, "D-Bus policy", 0o644, _shipped("net.nmfailover.Failover1.conf")),
    SystemFile(UNIT, "systemd unit", 0o644, render_unit),
    SystemFile(DISPATCHER_HOOK, "NetworkManager dispatcher hook", 0o755, _shipped("90-nmfailover")),
    SystemFile(ENV_FILE, "settings", 0o644, _shipped("nmfailover.env"), settings=True),
    SystemFile(MANPAGE, "man page", 0o644, _never, generated="man"),
    SystemFile(BASH_COMPLETION, "bash completion", 0o644, _never, generated="bash"),
    SystemFile(ZSH_COMPLETION, "zsh completion", 0o644, _never, generated="zsh"),
    SystemFile(NOTIFY_USER_UNIT, "desktop notice, user unit", 0o644, _running("nmfailover-notify.service")),
    SystemFile(NOTIFY_AUTOSTART, "desktop notice, autostart", 0o644, _running("nmfailover-notify.desktop")),
    SystemFile(POLKIT_ACTIONS, "polkit actions", 0o644, _shipped("net.nmfailover.policy")),
    SystemFile(
        POLKIT_DESKTOP_RULE, "polkit rule: the desktop's user", 0o644, _shipped("60-nmfailover-desktop.rules")
    ),
    SystemFile(POLKIT_RULE, "polkit rule", 0o644, _shipped("50-nmfailover.rules"), non_root=True),
    SystemFile(
        NON_ROOT_DROP_IN, "drop-in: run as user nmfailover", 0o644, _shipped("non-root.conf"), non_root=True
    ),
    SystemFile(
        KERNEL_WIREGUARD_DROP_IN,
        "drop-in: CAP_NET_ADMIN for kernel WireGuard tunnels",
        0o644,
        _shipped("kernel-wireguard.conf"),
        kernel_wireguard=True,
    ),
)


def under_root(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Manifest:
    files: dict[str, str]  # target -> sha256 of what was written
    dirs: list[str]  # directories install-system-files created, parents first

    @classmethod
    def load(cls, root: Path) -> _Manifest:
        path = under_root(root, MANIFEST)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(dict(data["files"]), list(data["dirs"]))
        except FileNotFoundError:
            return cls({}, [])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Without it --remove still recognises files identical to this version's, so carry on.
            print(f"nmfailover: ignoring unreadable {path}: {exc}", file=sys.stderr)
            return cls({}, [])

    def save(self, root: Path, created: list[str]) -> None:
        for directory in [*created, *_make_dirs(root, MANIFEST.parent)]:
            if directory not in self.dirs:
                self.dirs.append(directory)
        text = json.dumps({"version": __version__, "files": self.files, "dirs": self.dirs}, indent=2) + "\n"
        _write(under_root(root, MANIFEST), text.encode(), 0o644)


def _make_dirs(root: Path, directory: PurePosixPath) -> list[str]:
    """Create `directory` under root (0755) and its missing parents; the ones created, parents first."""
    missing = [d for d in (directory, *directory.parents) if not under_root(root, d).exists()]
    created = []
    for d in reversed(missing):
        path = under_root(root, d)
        path.mkdir(mode=0o755)
        path.chmod(0o755)  # whatever the umask
        _chown_root(path)
        created.append(str(d))
    return created


def _chown_root(path: Path | int) -> None:
    # Only root can give files to root; a non-root caller (--root into its own tree) keeps them.
    if os.geteuid() == 0:
        if isinstance(path, int):
            os.fchown(path, 0, 0)
        else:
            os.chown(path, 0, 0, follow_symlinks=False)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically: readers (NetworkManager, dbus, systemd) see the old or the new file,
    never a half-written one, and never one with the wrong mode or owner."""
    tmp = path.with_name(f".{path.name}.nmfailover-new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            _chown_root(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Outcome:
    action: str  # installed, updated, unchanged, fixed, kept, left, removed
    path: Path
    note: str = ""
    failed: bool = False

    def line(self) -> str:
        return f"{self.action:<10} {self.path}" + (f" ({self.note})" if self.note else "")


def install(
    root: Path = Path("/"),
    *,
    non_root: bool = False,
    kernel_wireguard: bool = False,
    force: bool = False,
    executable: Path | None = None,
    generate: Generate,
) -> list[Outcome]:
    """Put every system file in place under `root`; see the module docstring for the rules."""
    executable = executable or find_executable()
    manifest = _Manifest.load(root)
    created: list[str] = []
    outcomes = []
    try:
        for spec in SYSTEM_FILES:
            if (spec.non_root and not non_root) or (spec.kernel_wireguard and not kernel_wireguard):
                continue
            content = spec.content(executable, generate)
            outcome, created_now = _install_one(root, spec, content, manifest, force)
            created += created_now
            outcomes.append(outcome)
    except OSError as exc:
        raise SystemFilesError(f"cannot write {exc.filename}: {exc.strerror}") from None
    finally:
        # Also after a failure half-way: --remove must still know what got written.
        if manifest.files or created:
            manifest.save(root, created)
    return outcomes


def _install_one(
    root: Path, spec: SystemFile, content: bytes, manifest: _Manifest, force: bool
) -> tuple[Outcome, list[str]]:
    path = under_root(root, spec.target)
    target = str(spec.target)
    if not os.path.lexists(path):
        created = _make_dirs(root, spec.target.parent)
        _write(path, content, spec.mode)
        manifest.files[target] = _digest(content)
        return Outcome("installed", path, spec.what), created
    if path.is_symlink() or not path.is_file():
        # A symlink may be deliberate (to /dev/null, to mask a file): never write through or over it.
        note = f"{spec.what}: not a regular file; left alone, remove it to install ours"
        return Outcome("left", path, note, failed=True), []
    current = path.read_bytes()
    if spec.settings:
        if current == content:
            manifest.files.setdefault(target, _digest(content))
        return Outcome("kept", path, f"{spec.what}: an existing file is never replaced"), []
    if current == content:
        manifest.files[target] = _digest(content)
        info = path.stat()
        owner = 0 if os.geteuid() == 0 else info.st_uid  # only root can hand a file to root
        if (info.st_mode & 0o7777, info.st_uid) == (spec.mode, owner):
            return Outcome("unchanged", path, spec.what), []
        _write(path, content, spec.mode)  # atomically, rather than chmod on the live file
        was = f"mode {info.st_mode & 0o7777:04o}, uid {info.st_uid}"
        return Outcome("fixed", path, f"{spec.what}: {was} -> mode {spec.mode:04o}, root"), []
    if force or manifest.files.get(target) == _digest(current):
        _write(path, content, spec.mode)
        manifest.files[target] = _digest(content)
        return Outcome("updated", path, spec.what), []
    note = (
        f"{spec.what}: differs from what nmfailover {__version__} installs; left alone, --force replaces it"
    )
    return Outcome("left", path, note, failed=True), []


def remove(root: Path = Path("/"), *, generate: Generate, executable: Path | None = None) -> list[Outcome]:
    """Remove the system files install() wrote, those still as written; say what is left and why."""
    # lexists: under another root the link points at a path of that root, dangling from here.
    units = under_root(root, UNIT.parent)
    wants = sorted(d / UNIT_NAME for d in units.glob("*.wants") if os.path.lexists(d / UNIT_NAME))
    if wants:
        raise SystemFilesError(
            f"{UNIT_NAME} is still enabled ({wants[0]}): run `systemctl disable --now nmfailover` first"
        )
    manifest = _Manifest.load(root)
    try:
        executable = executable or find_executable()
    except SystemFilesError:
        executable = None  # the manifest still tells our unit apart; without it, it is left
    known = {str(spec.target) for spec in SYSTEM_FILES}
    # Files an earlier version installed that this one no longer ships: gone too, if unchanged.
    retired = [
        SystemFile(PurePosixPath(target), "from an earlier version", 0o644, _never)
        for target in manifest.files
        if target not in known
    ]
    outcomes = []
    try:
        for spec in (*SYSTEM_FILES, *retired):
            outcome = _remove_one(root, spec, manifest, executable, generate)
            if outcome is not None:
                outcomes.append(outcome)
        # Last, so that a failure above leaves it for the next attempt.
        under_root(root, MANIFEST).unlink(missing_ok=True)
        for directory in reversed(manifest.dirs):
            with contextlib.suppress(OSError):  # not empty (someone else's files), or already gone
                under_root(root, PurePosixPath(directory)).rmdir()
    except OSError as exc:
        raise SystemFilesError(f"cannot remove {exc.filename}: {exc.strerror}") from None
    return outcomes


def _remove_one(
    root: Path, spec: SystemFile, manifest: _Manifest, executable: Path | None, generate: Generate
) -> Outcome | None:
    path = under_root(root, spec.target)
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        return Outcome("left", path, f"{spec.what}: not a regular file, so not one nmfailover wrote")
    current = path.read_bytes()
    ours = manifest.files.get(str(spec.target)) == _digest(current)
    if not ours and executable is not None:
        with contextlib.suppress(SystemFilesError):
            ours = current == spec.content(executable, generate)
    if ours:
        path.unlink()
        return Outcome("removed", path, spec.what)
    if spec.settings:
        return Outcome("kept", path, f"{spec.what}: holds your changes; remove it by hand if unwanted")
    return Outcome(
        "left", path, f"{spec.what}: changed since it was installed; remove it by hand if unwanted"
    )


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def reload_commands() -> list[list[str]]:
    # dbus-daemon notices a new policy by itself, dbus-broker only on reload; reloading is harmless for both.
    return [["systemctl", "daemon-reload"], ["systemctl", "reload", "dbus"]]


def run_reloads(commands: Sequence[Sequence[str]]) -> Iterator[str]:
    """Run each command; a line per command saying what happened (a failure is reported, not raised)."""
    for argv in commands:
        shown = " ".join(argv)
        if shutil.which(argv[0]) is None:
            yield f"not run: {shown} ({argv[0]} not found)"
            continue
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            yield f"failed: {shown}: {exc}"
            continue
        problem = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        yield f"ran: {shown}" if done.returncode == 0 else f"failed: {shown}: {problem[0]}"


def directory_arg(text: str) -> Path:
    """argparse type for --root: an existing directory."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return path


def run_command(
    root: Path | None,
    *,
    remove_files: bool,
    non_root: bool,
    force: bool,
    generate: Generate,
    kernel_wireguard: bool = False,
) -> int:
    """`nmfailover install-system-files`: print what was done to each file; the exit code."""
    relocated = root is not None
    root = root or Path("/")
    if not relocated and os.geteuid() != 0:
        print(
            "nmfailover: install-system-files: must run as root (it writes to /etc and /usr/local); "
            "--root DIR writes under DIR instead",
            file=sys.stderr,
        )
        return 1
    try:
        outcomes = (
            remove(root, generate=generate)
            if remove_files
            else install(
                root, non_root=non_root, kernel_wireguard=kernel_wireguard, force=force, generate=generate
            )
        )
    except SystemFilesError as exc:
        print(f"nmfailover: install-system-files: {exc}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        print(outcome.line())
    if not outcomes:
        print("nothing to remove" if remove_files else "nothing to install")
    for line in _next_steps(root, relocated, remove_files, non_root):
        print(line)
    return 1 if any(o.failed for o in outcomes) else 0


def _next_steps(root: Path, relocated: bool, removed: bool, non_root: bool) -> list[str]:
    commands = reload_commands()
    if relocated or not systemd_running():
        # Another root is not the running system, and without systemd there is nothing to reload.
        lines = [f"then: {' '.join(argv)}" for argv in commands]
    else:
        lines = list(run_reloads(commands))
    if removed:
        return lines
    env_file = under_root(root, ENV_FILE)
    doctor = f"nmfailover doctor --root {shlex.quote(str(root))}" if relocated else "nmfailover doctor"
    enable = (
        f"systemctl --root={shlex.quote(str(root))} enable nmfailover"
        if relocated
        else "systemctl enable --now nmfailover"
    )
    lines.append(f"next: set NMFAILOVER_UPLINKS in {env_file}, check with `{doctor}`, then `{enable}`")
    packaged = [under_root(root, d / UNIT_NAME) for d in UNIT_DIRS[1:]]
    if any(p.exists() for p in packaged):
        lines.append(f"note: a packaged {UNIT_NAME} is installed too; the one in {UNIT.parent} overrides it")
    if non_root:
        lines.append(
            "the service runs as the user nmfailover: create it with `useradd --system --user-group "
            "--no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nmfailover`, then "
            "`systemctl reload dbus` (the D-Bus policy names that user; dbus looks names up on reload)"
        )
    return lines
