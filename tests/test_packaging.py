"""The .deb from packaging/build-deb, installed into a clean Debian 12 root made here with debootstrap:
files land with the right owners and modes, the installed copy runs, and removal is clean.

The debootstrap download is cached as a tarball in /var/cache/nmfailover-test/ (and apt's downloads next
to it), so only the first run fetches the base system.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import AliasChoices

from nmfailover.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
CACHE = Path("/var/cache/nmfailover-test")
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unavailable(reason: str) -> None:
    # CI runs as root with scripts/bootstrap's packages installed: a skip there would hide a broken setup.
    if os.environ.get("CI") == "true":
        pytest.fail(f"packaging test cannot run in CI: {reason}")
    pytest.skip(reason)


# -- fast checks of the shipped files -------------------------------------------------------------------


def _setting_variables() -> list[str]:
    names = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.append(next(c for c in choices if isinstance(c, str) and c.startswith("NMFAILOVER_")))
    return names


def test_example_env_file_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    text = (PACKAGING / "nmfailover.env").read_text()
    assigned = re.findall(r"^#?(NMFAILOVER_[A-Z0-9_]+)=", text, re.MULTILINE)
    assert sorted(assigned) == sorted(_setting_variables())
    assert not re.search(r"^NMFAILOVER_", text, re.MULTILINE), "everything must stay commented out"
    # Uncommented, the file must load and give exactly the defaults (plus the example uplinks). A hooks
    # directory named explicitly must exist, so it is pointed at one that does.
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    uncommented = tmp_path / "nmfailover.env"
    uncommented.write_text(
        re.sub(r"^#(NMFAILOVER_)", r"\1", text, flags=re.MULTILINE).replace(
            "=/etc/nmfailover/hooks.d\n", f"={hooks}\n"
        )
    )
    settings = load_settings({"NMFAILOVER_ENV_FILE": str(uncommented)})
    defaults = load_settings({"NMFAILOVER_ENV_FILE": "", "NMFAILOVER_UPLINKS": "Fiber,Hotspot"})
    assert settings.hooks_dir == hooks and defaults.hooks_dir == Path("/etc/nmfailover/hooks.d")
    assert settings.model_dump(exclude={"hooks_dir"}) == defaults.model_dump(exclude={"hooks_dir"})


def test_unit_and_scripts_are_well_formed() -> None:
    unit = (PACKAGING / "nmfailover.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/opt/nmfailover/bin/nmfailover run",
        "EnvironmentFile=-/etc/nmfailover/nmfailover.env",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_RAW",
        "WantedBy=multi-user.target",
    ):
        assert re.search(rf"^{re.escape(line)}$", unit, re.MULTILINE), line
    assert re.search(r"^WatchdogSec=\d+", unit, re.MULTILINE)
    scripts = [PACKAGING / "build-deb", *(PACKAGING / "deb").iterdir()]
    for script in scripts:
        shell = "bash" if script.name == "build-deb" else "sh"
        subprocess.run([shell, "-n", str(script)], check=True)
    if shutil.which("systemd-analyze"):
        unit = str(PACKAGING / "nmfailover.service")
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", unit], check=False, capture_output=True, text=True
        )
        # Outside the installed package, verify complains that ExecStart's binary is missing; a problem
        # with a directive comes as "FILE:LINE: ...".
        errors = re.findall(r"^.*\.service:\d+: .*$", result.stderr, re.MULTILINE)
        assert not errors, errors


# -- the .deb in a clean Debian 12 root -------------------------------------------------------------------


def debian_mirror() -> str:
    """The mirror this machine's apt uses for bookworm, so the test root comes from the same place."""
    lists = Path("/etc/apt/sources.list.d")
    sources = [Path("/etc/apt/sources.list"), *sorted(lists.glob("*.list")), *sorted(lists.glob("*.sources"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    key, colon, value = line.partition(":")
                    if colon and not line.startswith(("#", " ", "\t")):
                        fields[key.strip().lower()] = value.split()
                if (
                    "deb" in fields.get("types", [])
                    and SUITE in fields.get("suites", [])
                    and fields.get("enabled", ["yes"]) != ["no"]
                    and fields.get("uris")
                ):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return FALLBACK_MIRROR


def _run(*command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{output}"
    return result


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def run(
        self, *command: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        env = ["env", "-i", f"PATH={CHROOT_PATH}", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
        full = ("chroot", str(self.root), *env, *command)
        return (
            _run(*full, timeout=timeout)
            if check
            else subprocess.run(full, check=False, capture_output=True, text=True, timeout=timeout)
        )


@contextlib.contextmanager
def _cache_lock(timeout: float = 900) -> Iterator[None]:
    """Held for a whole run: concurrent runs (two suites on one machine) would share the tarball being
    written and apt's locks in the bind-mounted caches."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another packaging test run held {CACHE / 'lock'} for {timeout:.0f} s")
                time.sleep(1)
        yield


def _base_tarball(mirror: str) -> Path:
    tarball = CACHE / f"{SUITE}-minbase-{_run('dpkg', '--print-architecture').stdout.strip()}.tgz"
    if not tarball.exists():
        scratch = CACHE / "make-tarball"
        shutil.rmtree(scratch, ignore_errors=True)
        partial = tarball.with_suffix(".partial.tgz")
        try:
            _run("debootstrap", "--variant=minbase", f"--make-tarball={partial}", SUITE, str(scratch), mirror)
            partial.rename(tarball)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            partial.unlink(missing_ok=True)
    return tarball


def _mounts_under(root: Path) -> list[str]:
    mounts = [line.split()[1].replace("\\040", " ") for line in Path("/proc/mounts").read_text().splitlines()]
    return [m for m in mounts if m == str(root) or m.startswith(f"{root}/")]


@contextlib.contextmanager
def _torn_down(root: Path) -> Iterator[None]:
    try:
        yield
    finally:
        if root.exists():
            _tear_down(root)


def _tear_down(root: Path) -> None:
    # Anything still running in there (a daemon some postinst started despite policy-rc.d) holds mounts.
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "root").startswith(str(root)):
                os.kill(int(proc.name), 9)
        except OSError:
            pass
    for mount in sorted(_mounts_under(root), key=len, reverse=True):
        if subprocess.run(["umount", mount], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
    left = _mounts_under(root)
    # Never delete through a mount: the apt cache is bind-mounted in there.
    assert not left, f"still mounted, {root} left in place: {left}"
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=True)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        _unavailable("needs root (debootstrap, chroot, mount)")
    for tool in ("debootstrap", "dpkg-deb", "chroot"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not installed (scripts/bootstrap installs it)")
    started = time.monotonic()
    out = tmp_path_factory.mktemp("dist")
    build = _run(str(PACKAGING / "build-deb"), str(out))
    # build-deb passes on the build backend's deprecation warnings (pip -q would hide them): stale
    # packaging metadata is fixed while it is still only a warning.
    deprecations = [
        line
        for line in (build.stdout + build.stderr).splitlines()
        if re.search("deprecat", line, re.IGNORECASE)
    ]
    assert not deprecations, "\n".join(deprecations)
    built = Path(build.stdout.strip().splitlines()[-1])
    print(f"\nbuild-deb: {time.monotonic() - started:.0f} s, {built.stat().st_size / 1e6:.1f} MB")
    return built


@pytest.fixture(scope="module")
def debian(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    """A fresh minbase bookworm root with the .deb copied to /tmp, and with the means to install it."""
    mirror = debian_mirror()
    started = time.monotonic()
    root = tmp_path_factory.mktemp("debian") / "root"
    with _cache_lock(), _torn_down(root):
        tarball = _base_tarball(mirror)
        _run("debootstrap", "--variant=minbase", f"--unpack-tarball={tarball}", SUITE, str(root), mirror)
        _run("mount", "-t", "proc", "proc", str(root / "proc"))
        for cached, inside in (("archives", "var/cache/apt/archives"), ("lists", "var/lib/apt/lists")):
            (CACHE / cached / "partial").mkdir(parents=True, exist_ok=True)
            _run("mount", "--bind", str(CACHE / cached), str(root / inside))
        # No init script may start dbus or NetworkManager in here.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        (root / "etc/apt/apt.conf.d/80retries").write_text('Acquire::Retries "3";\n')  # a mirror hiccup
        shutil.copy(deb, root / "tmp")
        chroot = Chroot(root)
        chroot.run("apt-get", "update", "-qq")
        print(f"clean Debian 12 root: {time.monotonic() - started:.0f} s")
        yield chroot


@contextlib.contextmanager
def _http_204() -> Iterator[str]:
    class NoContent(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoContent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/generate_204"
    finally:
        server.shutdown()
        server.server_close()


def _mode(path: Path) -> tuple[int, int, str]:
    info = path.lstat()
    return info.st_uid, info.st_gid, oct(stat.S_IMODE(info.st_mode))


def _installed(chroot: Chroot) -> str:
    return chroot.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "nmfailover", check=False).stdout.strip()


@pytest.mark.slow
def test_deb_installs_runs_and_removes_cleanly(deb: Path, debian: Chroot) -> None:
    started = time.monotonic()
    debian.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", f"/tmp/{deb.name}")
    assert _installed(debian) == "ii"

    unit = debian.path("/lib/systemd/system/nmfailover.service")
    env_file = debian.path("/etc/nmfailover/nmfailover.env")
    hook = debian.path("/usr/lib/NetworkManager/dispatcher.d/90-nmfailover")
    policy = debian.path("/usr/share/dbus-1/system.d/net.nmfailover.Failover1.conf")
    assert _mode(unit) == (0, 0, "0o644")
    assert unit.read_text() == (PACKAGING / "nmfailover.service").read_text()
    assert _mode(env_file) == (0, 0, "0o644")
    assert env_file.read_text() == (PACKAGING / "nmfailover.env").read_text()
    assert _mode(debian.path("/etc/nmfailover/hooks.d")) == (0, 0, "0o755")
    if (REPO / "dispatcher.d/90-nmfailover").exists():
        # NetworkManager runs only root-owned executables that group and others cannot write.
        assert _mode(hook) == (0, 0, "0o755")
    if (PACKAGING / "dbus/net.nmfailover.Failover1.conf").exists():
        assert _mode(policy) == (0, 0, "0o644")
    examples = debian.path("/usr/share/doc/nmfailover/examples")
    shipped = [
        *(PACKAGING / "hooks.d").glob("*"),
        PACKAGING / "non-root.conf",
        PACKAGING / "polkit/50-nmfailover.rules",
    ]
    for example in shipped:
        assert (examples / example.relative_to(PACKAGING)).read_bytes() == example.read_bytes(), example
    assert os.readlink(debian.path("/usr/bin/nmfailover")) == "/opt/nmfailover/bin/nmfailover"
    # Debian's interpreter, not the build machine's.
    assert os.readlink(debian.path("/opt/nmfailover/bin/python3")) == "/usr/bin/python3"
    conffiles = debian.run("dpkg-query", "-W", "-f=${Conffiles}", "nmfailover").stdout
    assert "/etc/nmfailover/nmfailover.env " in conffiles
    for name in debian.run("dpkg", "-L", "nmfailover").stdout.split():
        uid, gid, mode = _mode(debian.path(name))
        assert (uid, gid) == (0, 0), name
        if not debian.path(name).is_symlink():
            assert not int(mode, 8) & 0o022, f"{name} is writable by group or others ({mode})"

    # The installed copy runs, with every module importable (so no dependency is missing).
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert version is not None
    assert debian.run("nmfailover", "--version").stdout.strip() == f"nmfailover {version[1]}"
    assert "usage: nmfailover check" in debian.run("nmfailover", "check", "--help").stdout
    debian.run(
        "/opt/nmfailover/bin/python",
        "-c",
        "import importlib, pkgutil, nmfailover\n"
        "for m in pkgutil.walk_packages(nmfailover.__path__, 'nmfailover.'):\n"
        "    if m.name != 'nmfailover.__main__': importlib.import_module(m.name)",
    )
    # A real probe round over loopback, so a dependency the probes load lazily cannot be missing.
    with _http_204() as url:
        debian.run(
            "/opt/nmfailover/bin/python",
            "-c",
            "import asyncio, sys\n"
            "from nmfailover.probe import Link, Target, probe_round\n"
            "result = asyncio.run(probe_round(Link('lo'), [Target(sys.argv[1], 204)], 5.0, 1))\n"
            "sys.exit(not result.ok and result.summary)",
            url,
        )
    # postinst compiled the byte code the read-only service could not write.
    site = debian.path("/opt/nmfailover/lib/python3.11/site-packages")
    assert list((site / "nmfailover/__pycache__").glob("cli.*"))

    # Remove: the service, the hook and the program go; the administrator's env file stays.
    with env_file.open("a") as edited:
        edited.write("NMFAILOVER_UPLINKS=Fiber,Hotspot\n")
    kept = env_file.read_text()
    debian.run("dpkg", "-r", "nmfailover")
    assert _installed(debian) == "rc"
    for gone in (unit, hook, policy, debian.path("/usr/bin/nmfailover"), debian.path("/opt/nmfailover")):
        assert not gone.exists() and not gone.is_symlink(), f"{gone} left after dpkg -r"
    assert env_file.read_text() == kept

    debian.run("dpkg", "-P", "nmfailover")
    assert _installed(debian) == ""
    assert not debian.path("/etc/nmfailover").exists()
    print(f"install, checks, remove, purge: {time.monotonic() - started:.0f} s")


@pytest.mark.slow
def test_maintainer_scripts_never_start_or_enable_the_service(deb: Path, debian: Chroot) -> None:
    """With a (fake) running systemd: install reloads only, an upgrade restarts only a running service,
    removal stops and disables it."""
    # The dependencies first, without the fake: their own scripts would talk to it too.
    debian.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", f"/tmp/{deb.name}")
    debian.run("dpkg", "-P", "nmfailover")
    log = debian.path("/tmp/systemctl.log")
    fake = debian.path("/usr/local/sbin/systemctl")
    fake.write_text('#!/bin/sh\necho "$*" >> /tmp/systemctl.log\n')
    fake.chmod(0o755)
    debian.path("/run/systemd/system").mkdir(parents=True)

    def calls(*command: str) -> list[str]:
        log.write_text("")
        debian.run(*command)
        return log.read_text().splitlines()

    try:
        assert calls("dpkg", "-i", f"/tmp/{deb.name}") == ["daemon-reload"]
        assert calls("dpkg", "-i", f"/tmp/{deb.name}") == ["daemon-reload", "try-restart nmfailover.service"]
        assert calls("dpkg", "-r", "nmfailover") == [
            "stop nmfailover.service",
            "disable --quiet nmfailover.service",
            "daemon-reload",
        ]
        assert calls("dpkg", "-P", "nmfailover") == ["daemon-reload"]
    finally:
        fake.unlink()
        shutil.rmtree(debian.path("/run/systemd"))
        log.unlink(missing_ok=True)
        debian.run("dpkg", "-P", "nmfailover")
