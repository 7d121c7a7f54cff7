"""`nmfailover install-system-files` into a temporary root: every file with its content, mode and owner, the
unit's ExecStart, what --remove takes out and what it leaves, and the wheel carrying the files at all."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from nmfailover import cli, system_files
from nmfailover.system_files import SYSTEM_FILES, under_root

REPO = Path(__file__).resolve().parent.parent
# Where each shipped file comes from: the one copy, which the .deb installs too.
SOURCES = {
    "net.nmfailover.Failover1.conf": REPO / "packaging/dbus/net.nmfailover.Failover1.conf",
    "nmfailover.service": REPO / "packaging/nmfailover.service",
    "90-nmfailover": REPO / "dispatcher.d/90-nmfailover",
    "nmfailover.env": REPO / "packaging/nmfailover.env",
    "50-nmfailover.rules": REPO / "packaging/polkit/50-nmfailover.rules",
    "60-nmfailover-desktop.rules": REPO / "packaging/polkit/60-nmfailover-desktop.rules",
    "net.nmfailover.policy": REPO / "packaging/polkit/net.nmfailover.policy",
    "non-root.conf": REPO / "packaging/non-root.conf",
    "kernel-wireguard.conf": REPO / "packaging/kernel-wireguard.conf",
    "nmfailover-notify.service": REPO / "packaging/nmfailover-notify.service",
    "nmfailover-notify.desktop": REPO / "packaging/nmfailover-notify.desktop",
}
EXECUTABLE = Path(sys.executable).parent / "nmfailover"
DEFAULT_FILES = [f for f in SYSTEM_FILES if not f.non_root and not f.kernel_wireguard]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="checks root ownership: run as root")


def nmfailover(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nmfailover", *args], capture_output=True, text=True, check=False, timeout=60
    )


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return nmfailover("install-system-files", "--root", str(root), *args)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def at(root: Path, path: PurePosixPath) -> Path:
    return under_root(root, path)


# -- installing --------------------------------------------------------------------------------------


def test_install_writes_every_file_with_its_content_mode_and_owner(tmp_path: Path) -> None:
    assert EXECUTABLE.is_file(), "the test runs the package installed in this interpreter's environment"
    done = install(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for spec in DEFAULT_FILES:
        path = at(tmp_path, spec.target)
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode), path
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (spec.mode, 0, 0), path
        assert f"installed  {path} ({spec.what})" in done.stdout.splitlines()
    for spec in SYSTEM_FILES:
        if spec.non_root or spec.kernel_wireguard:
            assert not at(tmp_path, spec.target).exists(), "an optional file without its option"
    hook = at(tmp_path, system_files.DISPATCHER_HOOK)
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755  # NetworkManager runs nothing else
    for target, source in (
        (system_files.DBUS_POLICY, "net.nmfailover.Failover1.conf"),
        (system_files.DISPATCHER_HOOK, "90-nmfailover"),
        (system_files.ENV_FILE, "nmfailover.env"),
    ):
        assert at(tmp_path, target).read_bytes() == SOURCES[source].read_bytes(), target
    for target in (system_files.MANPAGE, system_files.BASH_COMPLETION, system_files.ZSH_COMPLETION):
        assert at(tmp_path, target).stat().st_size > 1000, target
    assert at(tmp_path, system_files.MANPAGE).read_text().startswith(".TH NMFAILOVER 8")
    # Not the running system: reloading is left to the caller, and said so.
    assert "then: systemctl daemon-reload" in done.stdout
    assert "then: systemctl reload dbus" in done.stdout


def test_the_unit_runs_this_installation_and_differs_only_where_it_must(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    unit = at(tmp_path, system_files.UNIT).read_text()
    exec_lines = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_lines == [f"ExecStart={EXECUTABLE} run"]
    shipped_text = SOURCES["nmfailover.service"].read_text()
    shipped = shipped_text.splitlines()
    # Where this installation lives under a directory the shipped sandbox hides (a home, /tmp), that setting
    # is loosened; nothing else.
    hidings = system_files.sandbox_hidings(shipped_text, system_files.installation_paths(EXECUTABLE))
    body = [line for line in unit.splitlines() if not line.startswith("#")]
    changed = sorted(set(body) - set(shipped))
    allowed = {f"ExecStart={EXECUTABLE} run", "Documentation=man:nmfailover(8)"} | {
        h.loosened for h in hidings
    }
    assert set(changed) <= allowed, changed
    gone = sorted({line for line in shipped if not line.startswith("#")} - set(body))
    # The package's documentation paths do not exist for a pip install.
    gone = [line for line in gone if not line.startswith("Documentation=")]
    expected_gone = {"ExecStart=/opt/nmfailover/bin/nmfailover run"} | {h.setting for h in hidings}
    assert set(gone) <= expected_gone, gone
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(at(tmp_path, system_files.UNIT))],
            capture_output=True,
            text=True,
            check=False,
        )
        problems = [line for line in verify.stderr.splitlines() if ".service:" in line]
        assert not problems, problems


@pytest.mark.parametrize(
    ("paths", "protect_home"),
    [
        (["/opt/nmfailover/bin/nmfailover", "/usr/lib/python3.11"], "ProtectHome=yes"),
        (["/opt/nmfailover/bin/nmfailover", "/root/.local/pipx/venvs/nmfailover"], "ProtectHome=read-only"),
        (["/home/alice/venv/bin/nmfailover"], "ProtectHome=read-only"),
        (["/run/user/1000/x"], "ProtectHome=read-only"),
        (["/homework/venv/bin/nmfailover"], "ProtectHome=yes"),
    ],
)
def test_protect_home_is_loosened_only_for_installations_under_a_home(
    monkeypatch: pytest.MonkeyPatch, paths: list[str], protect_home: str
) -> None:
    monkeypatch.setattr(system_files, "installation_paths", lambda _exe: [PurePosixPath(p) for p in paths])
    unit = system_files.render_unit(Path(paths[0])).decode()
    assert [line for line in unit.splitlines() if line.startswith("ProtectHome=")] == [protect_home]


@pytest.mark.parametrize(
    ("paths", "private_tmp"),
    [
        (["/opt/nmfailover/bin/nmfailover", "/usr/lib/python3.11"], "PrivateTmp=yes"),
        (["/tmp/venv/bin/nmfailover", "/usr/lib/python3.11"], "PrivateTmp=no"),
        (["/opt/nmfailover/bin/nmfailover", "/var/tmp/python/bin/python3"], "PrivateTmp=no"),
        (["/tmpfs/venv/bin/nmfailover"], "PrivateTmp=yes"),
    ],
)
def test_private_tmp_is_turned_off_only_for_installations_under_tmp(
    monkeypatch: pytest.MonkeyPatch, paths: list[str], private_tmp: str
) -> None:
    # Issue 19: a unit written for an installation under /tmp kept PrivateTmp=yes and could not start.
    monkeypatch.setattr(system_files, "installation_paths", lambda _exe: [PurePosixPath(p) for p in paths])
    unit = system_files.render_unit(Path(paths[0])).decode()
    assert [line for line in unit.splitlines() if line.startswith("PrivateTmp=")] == [private_tmp]
    assert ("# This installation lives under /tmp or /var/tmp" in unit) == (private_tmp == "PrivateTmp=no")


@pytest.mark.parametrize(
    ("unit", "hidden"),
    [
        ("PrivateTmp=yes\n", ["PrivateTmp=yes"]),
        ("PrivateTmp=yes\nPrivateTmp=no\n", []),  # the last one counts, as for systemd
        ("PrivateTmp = yes\n", ["PrivateTmp=yes"]),
        ("ProtectHome=yes\n", []),
        ("", []),
    ],
)
def test_sandbox_hidings_read_the_unit_as_systemd_does(unit: str, hidden: list[str]) -> None:
    found = system_files.sandbox_hidings(unit, [PurePosixPath("/tmp/venv/bin/nmfailover")])
    assert [h.setting for h in found] == hidden


def _readme_section(title: str) -> str:
    return (REPO / "README.md").read_text().split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_the_readme_lists_every_file_install_system_files_writes() -> None:
    section = _readme_section("Install with pip or pipx")
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `/"))
    for spec in SYSTEM_FILES:
        # The opt-in ones are described in the text after the table, with their option.
        if spec.non_root or spec.kernel_wireguard:
            option = "`--non-root`" if spec.non_root else "`--kernel-wireguard`"
            assert f"`{spec.target}`" in section.split(option)[1], spec.target
            continue
        row = next((line for line in table.splitlines() if f"`{spec.target}`" in line), None)
        assert row is not None, f"{spec.target} is missing from the README's table of what it writes"
        assert f"| {spec.mode:04o} |" in row, spec.target
    assert f"`{system_files.MANIFEST}`" in table


def test_the_readme_runs_doctor_after_starting_the_service() -> None:
    # doctor checks that the unit is enabled and running: before `systemctl enable --now` it cannot pass.
    steps = _readme_section("Install with pip or pipx").split("```sh\n")[1].split("```")[0].splitlines()
    commands = [line.split("#")[0].strip() for line in steps]
    assert commands.index("nmfailover doctor") > commands.index("systemctl enable --now nmfailover")


@pytest.mark.parametrize(
    ("path", "quoted"),
    [
        ("/opt/nmfailover/bin/nmfailover", "/opt/nmfailover/bin/nmfailover"),
        ("/opt/my venv/bin/nmfailover", '"/opt/my venv/bin/nmfailover"'),
        ("/opt/100%/bin/nmfailover", '"/opt/100%%/bin/nmfailover"'),
        ("/opt/$HOME/x", '"/opt/$$HOME/x"'),
        ('/opt/a"b\\c', '"/opt/a\\"b\\\\c"'),
    ],
)
def test_exec_start_paths_are_quoted_for_systemd(path: str, quoted: str) -> None:
    assert system_files.systemd_quote(path) == quoted


def test_an_exec_path_with_a_line_break_is_refused() -> None:
    with pytest.raises(system_files.SystemFilesError, match="cannot hold"):
        system_files.systemd_quote("/opt/a\nb")


def test_an_existing_env_file_is_never_replaced(tmp_path: Path) -> None:
    env = at(tmp_path, system_files.ENV_FILE)
    env.parent.mkdir(parents=True)
    env.write_text("NMFAILOVER_UPLINKS=Fiber,Hotspot\n")
    env.chmod(0o600)
    done = install(tmp_path)
    assert done.returncode == 0, done.stderr
    assert env.read_text() == "NMFAILOVER_UPLINKS=Fiber,Hotspot\n"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600  # the user's file: not even its mode is touched
    assert f"kept       {env} (settings: an existing file is never replaced)" in done.stdout
    assert install(tmp_path, "--force").returncode == 0  # not even with --force
    assert env.read_text() == "NMFAILOVER_UPLINKS=Fiber,Hotspot\n"
    removed = install(tmp_path, "--remove")
    assert removed.returncode == 0 and env.read_text() == "NMFAILOVER_UPLINKS=Fiber,Hotspot\n"
    assert tree(tmp_path) == ["etc", "etc/nmfailover", "etc/nmfailover/nmfailover.env"]


def test_a_group_writable_hook_is_fixed_on_reinstall(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    hook = at(tmp_path, system_files.DISPATCHER_HOOK)
    hook.chmod(0o775)
    os.chown(hook, 1000, 1000)
    again = install(tmp_path)
    assert again.returncode == 0, again.stderr
    info = hook.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o755, 0, 0)
    assert (
        f"fixed      {hook} (NetworkManager dispatcher hook: mode 0775, uid 1000 -> mode 0755, root)"
        in again.stdout
    )
    assert f"unchanged  {at(tmp_path, system_files.UNIT)} (systemd unit)" in again.stdout


def test_a_locally_changed_unit_is_left_alone_unless_forced(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    unit = at(tmp_path, system_files.UNIT)
    edited = unit.read_text().replace("RestartSec=5", "RestartSec=7")
    unit.write_text(edited)
    again = install(tmp_path)
    assert again.returncode == 1
    assert unit.read_text() == edited
    assert f"left       {unit} (systemd unit: differs from what nmfailover" in again.stdout
    assert "--force replaces it" in again.stdout
    forced = install(tmp_path, "--force")
    assert forced.returncode == 0, forced.stdout
    assert "RestartSec=5" in unit.read_text() and f"updated    {unit} (systemd unit)" in forced.stdout


def test_files_an_earlier_version_wrote_are_updated(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    hook = at(tmp_path, system_files.DISPATCHER_HOOK)
    old = b"#!/bin/sh\n# an earlier version's hook\nexit 0\n"
    hook.write_bytes(old)
    manifest_path = at(tmp_path, system_files.MANIFEST)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][str(system_files.DISPATCHER_HOOK)] = hashlib.sha256(old).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    again = install(tmp_path)
    assert again.returncode == 0, again.stdout
    assert f"updated    {hook} (NetworkManager dispatcher hook)" in again.stdout
    assert hook.read_bytes() == SOURCES["90-nmfailover"].read_bytes()


def test_a_symlink_in_the_way_is_never_written_through(tmp_path: Path) -> None:
    hook = at(tmp_path, system_files.DISPATCHER_HOOK)
    hook.parent.mkdir(parents=True)
    hook.symlink_to("/dev/null")  # how an administrator masks a hook
    done = install(tmp_path, "--force")
    assert done.returncode == 1
    assert hook.is_symlink() and os.readlink(hook) == "/dev/null"
    assert "not a regular file" in done.stdout


# -- removing ----------------------------------------------------------------------------------------


def test_remove_takes_out_everything_it_installed(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("box\n")  # not ours: must survive
    assert install(tmp_path, "--non-root", "--kernel-wireguard").returncode == 0
    for spec in SYSTEM_FILES:
        assert at(tmp_path, spec.target).is_file(), spec.target
    removed = install(tmp_path, "--remove")
    assert removed.returncode == 0, removed.stderr
    assert tree(tmp_path) == ["etc", "etc/hostname"]
    for spec in SYSTEM_FILES:
        assert f"removed    {at(tmp_path, spec.target)} ({spec.what})" in removed.stdout
    assert "then: systemctl daemon-reload" in removed.stdout
    again = install(tmp_path, "--remove")
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_a_changed_env_file_survives_removal(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    env = at(tmp_path, system_files.ENV_FILE)
    settings = env.read_text() + "NMFAILOVER_UPLINKS=Fiber,Hotspot\n"
    env.write_text(settings)
    removed = install(tmp_path, "--remove")
    assert removed.returncode == 0, removed.stderr
    assert env.read_text() == settings
    assert f"kept       {env} (settings: holds your changes; remove it by hand if unwanted)" in removed.stdout
    assert tree(tmp_path) == ["etc", "etc/nmfailover", "etc/nmfailover/nmfailover.env"]


def test_remove_leaves_a_changed_file_and_says_so(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    policy = at(tmp_path, system_files.DBUS_POLICY)
    policy.write_text(policy.read_text().replace('group="nmfailover"', 'group="netadmins"'))
    removed = install(tmp_path, "--remove")
    assert removed.returncode == 0
    assert policy.exists()
    assert f"left       {policy} (D-Bus policy: changed since it was installed" in removed.stdout
    assert tree(tmp_path) == [
        "etc",
        "etc/dbus-1",
        "etc/dbus-1/system.d",
        "etc/dbus-1/system.d/net.nmfailover.Failover1.conf",
    ]


def test_without_the_manifest_remove_still_takes_identical_files(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    at(tmp_path, system_files.MANIFEST).unlink()
    removed = install(tmp_path, "--remove")
    assert removed.returncode == 0
    assert not any(at(tmp_path, spec.target).exists() for spec in SYSTEM_FILES)


def test_remove_refuses_while_the_unit_is_enabled(tmp_path: Path) -> None:
    assert install(tmp_path).returncode == 0
    enabled = subprocess.run(
        ["systemctl", f"--root={tmp_path}", "enable", system_files.UNIT_NAME],
        capture_output=True,
        check=False,
    )
    if enabled.returncode != 0:
        pytest.skip(f"systemctl --root cannot enable here: {enabled.stderr!r}")
    removed = install(tmp_path, "--remove")
    assert removed.returncode == 1
    assert removed.stderr.strip().endswith("run `systemctl disable --now nmfailover` first")
    assert at(tmp_path, system_files.UNIT).exists()


# -- the command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["install-system-files", "--root", "/nonexistent"], "--root"),
        (["install-system-files", "--root"], "--root"),
        (["install-system-files", "--remove", "--force"], "--remove"),
        (["install-system-files", "--remove", "--non-root"], "--remove"),
        (["install-system-files", "--remove", "--kernel-wireguard"], "--kernel-wireguard"),
        (["install-system-files", "--non-root=yes"], "--non-root"),
        (["install-system-files", "extra"], "extra"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_argument(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], lines
    assert captured.out == ""


def test_without_root_it_refuses_to_touch_the_system(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["install-system-files"]) == 1
    assert capsys.readouterr().err.strip() == (
        "nmfailover: install-system-files: must run as root (it writes to /etc and /usr/local); "
        "--root DIR writes under DIR instead"
    )


def test_no_console_script_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    monkeypatch.setattr(sysconfig, "get_path", lambda *a: str(tmp_path / "nowhere"))
    with pytest.raises(system_files.SystemFilesError, match="no nmfailover console script"):
        system_files.find_executable()


# -- the package data --------------------------------------------------------------------------------


def test_package_data_is_the_one_copy() -> None:
    data = REPO / "nmfailover" / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(SOURCES)
    for name, source in SOURCES.items():
        assert (data / name).is_symlink(), f"{name} must link to {source}, not be a second copy"
        assert (data / name).resolve() == source.resolve(), name
        assert system_files.data_file(name) == source.read_bytes()


@pytest.mark.slow  # builds a wheel, with setuptools from the index: not for `-m "not lab"`
def test_the_wheel_carries_the_files_themselves(tmp_path: Path) -> None:
    # From a copy of the tree, as a release build sees it: the symlinks must turn into their content.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "nmfailover", "packaging", "dispatcher.d"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, symlinks=True)
        else:
            shutil.copy2(REPO / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if build.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot build the wheel: {build.stderr[-2000:]}")
        pytest.skip(f"cannot build the wheel here (no index for setuptools?): {build.stderr[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("nmfailover-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name, source in SOURCES.items():
            info = archive.getinfo(f"nmfailover/data/{name}")
            assert not stat.S_ISLNK(info.external_attr >> 16), name
            assert archive.read(info) == source.read_bytes(), name


def test_the_desktop_notice_runs_this_installation(tmp_path: Path) -> None:
    assert cli.main(["install-system-files", "--root", str(tmp_path)]) == 0
    for path in (system_files.NOTIFY_USER_UNIT, system_files.NOTIFY_AUTOSTART):
        text = system_files.under_root(tmp_path, path).read_text()
        assert f"{EXECUTABLE} notify" in text and system_files.PACKAGED_EXECUTABLE not in text, path
