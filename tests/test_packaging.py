"""The Debian package (debian/, built with debhelper by packaging/build-deb): the shipped files are well
formed, lintian finds nothing but what debian/nmfailover.lintian-overrides justifies, and the package
installs, runs and goes away cleanly in clean Debian roots made here with debootstrap:

- Debian 12 (bookworm): the package this machine builds (CI's machine is Debian 12) is installed in a
  minbase bookworm root: owners and modes, the installed copy runs (`--version`, `check --help`, every
  module imports, a real probe over loopback), remove keeps the env file and purge deletes it, and the
  maintainer scripts (dh_installsystemd's) enable and start the service on install and keep a disable.
- Debian 13 (trixie): the source package this machine builds is built again inside a trixie root, as a
  Debian build machine would (its Build-Depends, its python3 3.13, pip reaching PyPI from the root), then
  checked with dpkg-deb and trixie's lintian and put through the same install checks there.

Each release's minbase root is made once with debootstrap and cached as a tarball in
/var/cache/nmfailover-test/, with apt's lists and downloads next to it, so only the first run fetches the
base systems and the packages. Nothing here changes the host's network or apt configuration: a root gets
its own copy of this machine's resolv.conf and of the CA certificates this machine added locally (so that
pip in the root trusts what pip on the host trusts).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import fcntl
import http.server
import os
import re
import shutil
import stat
import subprocess
import tarfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import AliasChoices

from nmfailover.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
DEBIAN = REPO / "debian"
MAINTAINER_SCRIPTS = [DEBIAN / f"nmfailover.{name}" for name in ("postinst", "prerm", "postrm")]
CACHE = Path("/var/cache/nmfailover-test")
HOST_SUITE = "bookworm"  # what this machine's apt uses, and so where the test roots' mirror is found
FALLBACK_MIRROR = "http://deb.debian.org/debian"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
# Lintian tags each release may show below warnings: none is an error or a warning, so none is overridden.
# They are listed so that a new one is looked at rather than waved through.
ACCEPTED_INFO = {
    "debian-watch-file-is-missing",  # no upstream release site to watch yet
    "missing-prerequisite-for-pyproject-backend",  # setuptools comes from PyPI into the build's own venv
    "out-of-date-standards-version",  # 4.6.2 is Debian 12's; trixie's lintian knows 4.7.x
    "package-supports-alternative-init-but-no-init.d-script",  # systemd only, as the daemon needs sd_notify
    "package-contains-documentation-outside-usr-share-doc",  # the bundled distributions' own METADATA etc.
    "extra-license-file",  # their license files, which the copyright file points to
    "hardening-no-bindnow",  # PyPI's manylinux builds of dbus-fast and pydantic-core
    "hardening-no-fortify-functions",
    "spelling-error-in-binary",
    "no-homepage-field",
    "repeated-path-segment",  # .../site-packages/nmfailover/ under /opt/nmfailover/
}


def _unavailable(reason: str) -> None:
    # CI runs as root with scripts/bootstrap's packages installed: a skip there would hide a broken setup.
    if os.environ.get("CI") == "true":
        pytest.fail(f"packaging test cannot run in CI: {reason}")
    pytest.skip(reason)


def _upstream_version() -> str:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


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
        "Documentation=man:nmfailover(8) file:/usr/share/doc/nmfailover/README.md",
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
    # dh_installsystemd installs the unit from debian/, where it is a link to the one copy.
    assert (DEBIAN / "nmfailover.service").resolve() == (PACKAGING / "nmfailover.service").resolve()
    subprocess.run(["bash", "-n", str(PACKAGING / "build-deb")], check=True)
    for script in MAINTAINER_SCRIPTS:
        subprocess.run(["sh", "-n", str(script)], check=True)
        text = script.read_text()
        assert text.startswith("#!/bin/sh\nset -e\n"), script
        assert text.count("#DEBHELPER#") == 1, f"{script}: dh_installsystemd's code goes at #DEBHELPER#"
        # Starting, stopping and enabling are dh_installsystemd's alone.
        assert "systemctl" not in text.replace("# dh_installsystemd", ""), script
    if shutil.which("systemd-analyze"):
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(PACKAGING / "nmfailover.service")],
            check=False,
            capture_output=True,
            text=True,
        )
        # Outside the installed package, verify complains that ExecStart's binary is missing; a problem
        # with a directive comes as "FILE:LINE: ...".
        errors = re.findall(r"^.*\.service:\d+: .*$", result.stderr, re.MULTILINE)
        assert not errors, errors


def _changelog_top() -> re.Match[str]:
    top = re.match(
        r"(?P<source>\S+) \((?P<version>[^)]+)\) (?P<distribution>\S+); urgency=\w+\n\n"
        r"(?:  .*\n|\n)*? -- (?P<maintainer>.+?)  (?P<date>.+)\n",
        (DEBIAN / "changelog").read_text(),
    )
    assert top, "debian/changelog: its first entry does not parse"
    return top


def test_debian_metadata_agrees_with_the_project() -> None:
    top = _changelog_top()
    control = (DEBIAN / "control").read_text()
    maintainer = re.search(r"^Maintainer: (.+)$", control, re.MULTILINE)
    assert maintainer and top["source"] == "nmfailover" and top["distribution"] == "unstable"
    # The Debian revision goes on the project's own version: bump pyproject.toml, add a changelog entry.
    assert re.fullmatch(rf"{re.escape(_upstream_version())}-\d+", top["version"]), top["version"]
    # The entry's date is the build's SOURCE_DATE_EPOCH: one in the future makes every file "from the future".
    assert email.utils.parsedate_to_datetime(top["date"]) <= datetime.datetime.now(datetime.UTC), top["date"]
    assert top["maintainer"] == maintainer[1]
    assert re.fullmatch(r"[^<>@]+ <[^<>@\s]+@[^<>@\s]+\.[a-z]+>", maintainer[1]), maintainer[1]
    # Every lintian override says why, in a comment of its own right above it.
    previous = ""
    for line in (DEBIAN / "nmfailover.lintian-overrides").read_text().splitlines():
        if line.startswith("nmfailover"):
            assert previous.startswith(("#", "nmfailover")), f"override without a reason: {line}"
        previous = line
    # Every dependency the project names is pinned, so the package bundles what the suite tested.
    pins = _pins()
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        name = _normalized(re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0])
        assert name in pins, f"pin {name} in debian/constraints.txt (the version the suite runs)"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    text = (DEBIAN / "constraints.txt").read_text()
    return {_normalized(name): version for name, version in re.findall(r"^([\w.-]+)==(\S+)$", text, re.M)}


# -- building ---------------------------------------------------------------------------------------------


def _run(*command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{output}"
    return result


@dataclass(frozen=True)
class Build:
    deb: Path
    changes: Path

    def source(self, path: str) -> bytes:
        """A file of the sources it was built from (the orig tarball, so edits since do not count)."""
        (orig,) = self.changes.parent.glob("nmfailover_*.orig.tar.*")
        with tarfile.open(orig) as tar:
            member = tar.extractfile(f"nmfailover-{_upstream_version()}/{path}")
            assert member is not None, path
            return member.read()


def _build(out: Path) -> Build:
    started = time.monotonic()
    build = _run(str(PACKAGING / "build-deb"), str(out))
    # The build passes on the build backend's deprecation warnings (pip -q would hide them): stale
    # packaging metadata is fixed while it is still only a warning.
    deprecations = [
        line
        for line in (build.stdout + build.stderr).splitlines()
        if re.search("deprecat", line, re.IGNORECASE)
    ]
    assert not deprecations, "\n".join(deprecations)
    deb = Path(build.stdout.strip().splitlines()[-1])
    (changes,) = out.glob("nmfailover_*.changes")
    print(f"\nbuild-deb: {time.monotonic() - started:.0f} s, {deb.stat().st_size / 1e6:.1f} MB")
    return Build(deb, changes)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The package this machine builds, once per test run: pytest-xdist's workers share it."""
    if os.geteuid() != 0:
        _unavailable("needs root (debootstrap, chroot, mount)")
    for tool in ("debootstrap", "dpkg-buildpackage", "dh", "lintian", "chroot"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not installed (scripts/bootstrap installs it)")
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return _build(tmp_path_factory.mktemp("dist"))
    shared = tmp_path_factory.getbasetemp().parent / "nmfailover-dist"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / "built"
        if not done.exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir()
            build = _build(shared)
            done.write_text(f"{build.deb}\n{build.changes}\n")
        deb, changes = done.read_text().split()
        return Build(Path(deb), Path(changes))


def _lintian_findings(output: str) -> list[str]:
    """Errors and warnings, and any other tag nobody has looked at yet."""
    findings = []
    for line in output.splitlines():
        match = re.match(r"([EWIPXC]): \S+(?: source)?: (\S+)", line)
        if match and (match[1] in "EW" or match[2] not in ACCEPTED_INFO):
            findings.append(line)
    return findings


@pytest.mark.slow
def test_lintian_finds_no_errors_or_warnings(built: Build) -> None:
    """lintian on the .changes: the source package and the .deb, every tag down to pedantic."""
    started = time.monotonic()
    result = subprocess.run(
        ["lintian", "--pedantic", "--display-info", "--fail-on", "none", str(built.changes)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Also fails on an override that matches nothing any more (unused-override, mismatched-override):
    # stale overrides would hide the next real finding.
    assert not _lintian_findings(result.stdout), result.stdout
    print(f"lintian: {time.monotonic() - started:.0f} s")


# -- clean Debian roots -------------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The mirror this machine's apt uses for its own release, so the test roots come from the same place
    (a Debian mirror carries every release)."""
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
                    and HOST_SUITE in fields.get("suites", [])
                    and fields.get("enabled", ["yes"]) != ["no"]
                    and fields.get("uris")
                ):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == HOST_SUITE:
                    return words[1]
    return FALLBACK_MIRROR


class Chroot:
    def __init__(self, root: Path, suite: str) -> None:
        self.root = root
        self.suite = suite

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def run(
        self, *command: str, check: bool = True, timeout: float = 900, home: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = ["env", "-i", f"PATH={CHROOT_PATH}", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
        if home:
            env.append("HOME=/root")
        full = ("chroot", str(self.root), *env, *command)
        return (
            _run(*full, timeout=timeout)
            if check
            else subprocess.run(full, check=False, capture_output=True, text=True, timeout=timeout)
        )

    def apt_install(self, *packages: str) -> None:
        self.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages)


@contextlib.contextmanager
def _cache_lock(cache: Path, timeout: float = 900) -> Iterator[None]:
    """Held while a root of this release exists: two roots (two workers, two runs) would share the
    tarball being written and apt's locks in the bind-mounted caches."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another packaging test held {cache / 'lock'} for {timeout:.0f} s")
                time.sleep(1)
        yield


def _root_tarball(suite: str, mirror: str) -> Path:
    """A finished minbase root of `suite`, as a plain tarball: unpacking it takes seconds, where
    debootstrap's own second stage takes most of a minute."""
    tarball = CACHE / f"{suite}-minbase-{_run('dpkg', '--print-architecture').stdout.strip()}.tar"
    # Remade monthly: apt would otherwise upgrade more and more of it in every root.
    if tarball.exists() and time.time() - tarball.stat().st_mtime > 30 * 86400:
        tarball.unlink()
    if not tarball.exists():
        scratch = CACHE / f"make-root-{suite}"
        partial = tarball.with_suffix(".partial")
        try:
            if scratch.exists():
                _tear_down(scratch)
            _run("debootstrap", "--variant=minbase", suite, str(scratch), mirror)
            assert not _mounts_under(scratch), _mounts_under(scratch)
            _run("chroot", str(scratch), "apt-get", "clean")  # its downloads are in the tarball already
            _run("tar", "-C", str(scratch), "--one-file-system", "-cf", str(partial), ".")
            partial.rename(tarball)
        finally:
            if scratch.exists():
                _tear_down(scratch)
            partial.unlink(missing_ok=True)
    return tarball


def _mounts_under(root: Path) -> list[str]:
    mounts = [line.split()[1].replace("\\040", " ") for line in Path("/proc/mounts").read_text().splitlines()]
    return [m for m in mounts if m == str(root) or m.startswith(f"{root}/")]


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


@contextlib.contextmanager
def debian_root(suite: str, tmp_path: Path) -> Iterator[Chroot]:
    """A fresh minbase root of `suite` with apt ready (lists updated) and no init script allowed to run."""
    mirror = debian_mirror()
    started = time.monotonic()
    cache = CACHE / suite
    root = tmp_path / f"{suite}-root"
    with _cache_lock(cache):
        try:
            tarball = _root_tarball(suite, mirror)
            root.mkdir()
            _run("tar", "-C", str(root), "-xf", str(tarball))
            # This machine's name servers now (the cached root has those of the day it was made); a
            # symlink there would point out of the root, so it goes first.
            (root / "etc/resolv.conf").unlink(missing_ok=True)
            shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
            _run("mount", "-t", "proc", "proc", str(root / "proc"))
            for cached, inside in (("archives", "var/cache/apt/archives"), ("lists", "var/lib/apt/lists")):
                (cache / cached / "partial").mkdir(parents=True, exist_ok=True)
                _run("mount", "--bind", str(cache / cached), str(root / inside))
            # No init script may start dbus or NetworkManager in here.
            policy = root / "usr/sbin/policy-rc.d"
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            (root / "etc/apt/apt.conf.d/80retries").write_text('Acquire::Retries "3";\n')  # a mirror hiccup
            chroot = Chroot(root, suite)
            chroot.run("apt-get", "update", "-qq")
            print(f"\nclean {suite} root: {time.monotonic() - started:.0f} s")
            yield chroot
        finally:
            if root.exists():
                _tear_down(root)


def _trust_the_hosts_local_cas(chroot: Chroot) -> None:
    """The CA certificates this machine's administrator added (a TLS-inspecting proxy's, say), so that pip
    in the root reaches PyPI wherever pip on the host does. Copied before ca-certificates is installed in
    the root, whose postinst then adds them to the root's bundle; on most machines there are none."""
    local = Path("/usr/local/share/ca-certificates")
    for cert in local.rglob("*.crt") if local.is_dir() else []:
        target = chroot.path(f"{local}/{cert.relative_to(local)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cert, target)


# -- the installed package ----------------------------------------------------------------------------------


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


def _next_minor(version: str) -> str:
    major, minor = version.split(".")
    return f"{major}.{int(minor) + 1}"


def _installs_runs_and_removes_cleanly(chroot: Chroot, deb: str, built: Build) -> None:
    """Install `deb` (a path inside the root) with apt, check it, remove it, purge it."""
    python = PYTHON[chroot.suite]
    chroot.apt_install(deb)
    assert _installed(chroot) == "ii"

    # /lib is /usr/lib in these (merged-/usr) roots: debhelper puts the unit in either, by release.
    unit = chroot.path("/usr/lib/systemd/system/nmfailover.service")
    env_file = chroot.path("/etc/nmfailover/nmfailover.env")
    hook = chroot.path("/usr/lib/NetworkManager/dispatcher.d/90-nmfailover")
    policy = chroot.path("/usr/share/dbus-1/system.d/net.nmfailover.Failover1.conf")
    assert _mode(unit) == (0, 0, "0o644")
    assert unit.read_bytes() == built.source("packaging/nmfailover.service")
    assert _mode(env_file) == (0, 0, "0o644")
    assert env_file.read_bytes() == built.source("packaging/nmfailover.env")
    assert _mode(chroot.path("/etc/nmfailover/hooks.d")) == (0, 0, "0o755")
    # NetworkManager runs only root-owned executables that group and others cannot write.
    assert _mode(hook) == (0, 0, "0o755")
    assert hook.read_bytes() == built.source("dispatcher.d/90-nmfailover")
    assert _mode(policy) == (0, 0, "0o644")
    # The desktop notice: an autostart entry (a conffile, as everything in /etc) and a user unit.
    autostart = chroot.path("/etc/xdg/autostart/nmfailover-notify.desktop")
    user_unit = chroot.path("/usr/lib/systemd/user/nmfailover-notify.service")
    assert _mode(autostart) == (0, 0, "0o644") and _mode(user_unit) == (0, 0, "0o644")
    assert autostart.read_bytes() == built.source("packaging/nmfailover-notify.desktop")
    assert user_unit.read_bytes() == built.source("packaging/nmfailover-notify.service")
    doc = chroot.path("/usr/share/doc/nmfailover")
    # The unit's Documentation= names both.
    assert (doc / "README.md").read_bytes() == built.source("README.md")
    if (REPO / "nmfailover/manpage.py").exists():
        assert chroot.path("/usr/share/man/man8/nmfailover.8.gz").is_file()
        assert chroot.path("/usr/share/bash-completion/completions/nmfailover").is_file()
        assert chroot.path("/usr/share/zsh/vendor-completions/_nmfailover").is_file()
    shipped = [
        *(PACKAGING / "hooks.d").glob("*"),
        *(PACKAGING / "bars").glob("*"),
        PACKAGING / "non-root.conf",
        PACKAGING / "kernel-wireguard.conf",
        PACKAGING / "polkit/50-nmfailover.rules",
    ]
    for example in shipped:
        relative = example.relative_to(PACKAGING)
        assert (doc / "examples" / relative).read_bytes() == built.source(f"packaging/{relative}"), example
    # The fleet view: alerting rules and dashboard where a Prometheus or Grafana set-up can name them.
    for shipped_file, source in (
        (
            "/usr/share/nmfailover/prometheus/nmfailover.rules.yml",
            "packaging/prometheus/nmfailover.rules.yml",
        ),
        ("/usr/share/nmfailover/grafana/nmfailover.json", "packaging/grafana/nmfailover.json"),
    ):
        assert _mode(chroot.path(shipped_file)) == (0, 0, "0o644"), shipped_file
        assert chroot.path(shipped_file).read_bytes() == built.source(source), shipped_file
    assert os.readlink(chroot.path("/usr/bin/nmfailover")) == "/opt/nmfailover/bin/nmfailover"
    # Debian's interpreter, not the build machine's, and the package depends on exactly its minor version.
    assert os.readlink(chroot.path("/opt/nmfailover/bin/python3")) == "/usr/bin/python3"
    assert (
        chroot.run("python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()
        == python
    )
    depends = chroot.run("dpkg-query", "-W", "-f=${Depends}", "nmfailover").stdout
    assert f"python3 (>= {python}), python3 (<< {_next_minor(python)})" in depends, depends
    site = chroot.path(f"/opt/nmfailover/lib/python{python}/site-packages")
    # No pip, no setuptools: dpkg alone manages /opt/nmfailover.
    assert not list(site.glob("pip*")) and not list(site.glob("setuptools*"))
    # Every bundled distribution is the pinned version (a new transitive dependency gets pinned too), and
    # the copyright file names it (from its metadata, at build time).
    copyright = (doc / "copyright").read_text()
    pins = _pins()
    for info in site.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        if name != "nmfailover":
            assert pins.get(_normalized(name)) == version, f"{info.name}: pin it in debian/constraints.txt"
            assert re.search(
                rf"^ \S+ {re.escape(version)}: .+, see .*/{re.escape(info.name)}/$", copyright, re.M
            ), f"{info.name} missing from the copyright file"
    # certifi's bundle is Debian's, which the package's Depends brings.
    assert os.readlink(site / "certifi/cacert.pem") == "/etc/ssl/certs/ca-certificates.crt"
    chroot.run("test", "-r", f"/opt/nmfailover/lib/python{python}/site-packages/certifi/cacert.pem")
    conffiles = chroot.run("dpkg-query", "-W", "-f=${Conffiles}", "nmfailover").stdout
    assert "/etc/nmfailover/nmfailover.env " in conffiles
    assert "/etc/xdg/autostart/nmfailover-notify.desktop " in conffiles
    for name in chroot.run("dpkg", "-L", "nmfailover").stdout.split():
        if name == "/usr/share/polkit-1/rules.d":
            continue  # polkitd's own directory (polkitd:root 0700), where the desktop rule goes
        uid, gid, mode = _mode(chroot.path(name))
        assert (uid, gid) == (0, 0), name
        if not chroot.path(name).is_symlink():
            assert not int(mode, 8) & 0o022, f"{name} is writable by group or others ({mode})"

    # The installed copy runs, with every module importable (so no dependency is missing).
    assert chroot.run("nmfailover", "--version").stdout.strip() == f"nmfailover {_upstream_version()}"
    assert "usage: nmfailover check" in chroot.run("nmfailover", "check", "--help").stdout
    chroot.run(
        "/opt/nmfailover/bin/python",
        "-c",
        "import importlib, pkgutil, nmfailover\n"
        "for m in pkgutil.walk_packages(nmfailover.__path__, 'nmfailover.'):\n"
        "    if m.name != 'nmfailover.__main__': importlib.import_module(m.name)",
    )
    # A real probe round over loopback, so a dependency the probes load lazily cannot be missing.
    with _http_204() as url:
        chroot.run(
            "/opt/nmfailover/bin/python",
            "-c",
            "import asyncio, sys\n"
            "from nmfailover.probe import Link, Target, probe_round\n"
            "result = asyncio.run(probe_round(Link('lo'), [Target(sys.argv[1], 204)], 5.0, 1))\n"
            "sys.exit(not result.ok and result.summary)",
            url,
        )
    # postinst compiled the byte code the read-only service could not write.
    assert list((site / "nmfailover/__pycache__").glob("cli.*"))

    # Remove: the service, the hook and the program go; the administrator's env file stays.
    with env_file.open("a") as edited:
        edited.write("NMFAILOVER_UPLINKS=Fiber,Hotspot\n")
    kept = env_file.read_text()
    chroot.run("dpkg", "-r", "nmfailover")
    assert _installed(chroot) == "rc"
    program = (chroot.path("/usr/bin/nmfailover"), chroot.path("/opt/nmfailover"))
    for gone in (unit, user_unit, hook, policy, *program):
        assert not gone.exists() and not gone.is_symlink(), f"{gone} left after dpkg -r"
    assert env_file.read_text() == kept

    chroot.run("dpkg", "-P", "nmfailover")
    assert _installed(chroot) == ""
    assert not chroot.path("/etc/nmfailover").exists() and not autostart.exists()


FAKE_SYSTEMCTL = """#!/bin/sh
# Logs every call; answers like systemd for a unit that is enabled / running only when the test says so.
echo "$*" >> /tmp/systemctl.log
case " $* " in
    # deb-systemd-helper enables through the presets when systemctl is there; Debian's default preset is
    # "enable", which makes the unit's WantedBy= link.
    *" preset nmfailover.service "*)
        mkdir -p /etc/systemd/system/multi-user.target.wants
        for unit in /usr/lib/systemd/system/nmfailover.service /lib/systemd/system/nmfailover.service; do
            if [ -e "$unit" ]; then
                ln -sf "$unit" /etc/systemd/system/multi-user.target.wants/nmfailover.service; break
            fi
        done ;;
    *" is-enabled "*)
        if [ -e /tmp/unit-enabled ] || [ -e /etc/systemd/system/multi-user.target.wants/nmfailover.service ]; then
            echo enabled
        else
            echo disabled; exit 1
        fi ;;
    *" is-active "*) [ -e /tmp/unit-active ] || exit 3 ;;
esac
"""


def _maintainer_scripts_enable_and_start_on_install(chroot: Chroot, deb: str) -> None:
    """With a (fake) running systemd: installing enables and starts the unit (it finds its uplinks itself);
    an upgrade restarts it if it is enabled or runs and keeps an administrator's disable; removal stops it;
    purge forgets its enablement links."""
    # The dependencies first, without the fake: their own scripts would talk to it too.
    chroot.apt_install(deb)
    chroot.run("dpkg", "-P", "nmfailover")
    log = chroot.path("/tmp/systemctl.log")
    fake = chroot.path("/usr/local/sbin/systemctl")
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    chroot.path("/run/systemd/system").mkdir(parents=True)
    # deb-systemd-invoke asks policy-rc.d first: let it through, so that the fake sees every action.
    policy = chroot.path("/usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\nexit 0\n")
    wants = chroot.path("/etc/systemd/system/multi-user.target.wants/nmfailover.service")

    def actions(*command: str) -> list[str]:
        """What the command's maintainer scripts asked of systemctl, less the questions."""
        log.write_text("")
        chroot.run(*command)
        calls = log.read_text().splitlines()
        return [
            call for call in calls if not re.search(r"\bis-(enabled|active)\b|--version|list-units", call)
        ]

    def set_state(*, enabled: bool, active: bool) -> None:
        for flag, on in (("unit-enabled", enabled), ("unit-active", active)):
            chroot.path(f"/tmp/{flag}").unlink(missing_ok=True)
            if on:
                chroot.path(f"/tmp/{flag}").touch()

    try:
        set_state(enabled=False, active=False)
        installed = actions("dpkg", "-i", deb)
        assert wants.is_symlink(), f"installing did not enable the unit: {installed}"
        assert installed[-1] == "--quiet --system start nmfailover.service", installed
        # Running, enabled: an upgrade (the same version again) restarts it on the new code.
        set_state(enabled=True, active=True)
        assert actions("dpkg", "-i", deb)[-1] == "--quiet --system restart nmfailover.service"
        # Disabled and stopped by the administrator: an upgrade keeps it so.
        wants.unlink()
        set_state(enabled=False, active=False)
        upgraded = actions("dpkg", "-i", deb)
        assert not wants.is_symlink(), "an upgrade enabled the unit an administrator disabled"
        assert not any(re.search(r"\b(start|restart)\b", call) for call in upgraded), upgraded
        (unit,) = [
            f
            for f in chroot.run("dpkg", "-L", "nmfailover").stdout.split()
            if f.endswith("/systemd/system/nmfailover.service")
        ]
        wants.symlink_to(unit)
        set_state(enabled=True, active=True)
        assert actions("dpkg", "-r", "nmfailover") == ["stop nmfailover.service", "--system daemon-reload"]
        # Purge: the enablement link goes with the package, and nothing is started or enabled.
        assert actions("dpkg", "-P", "nmfailover") == ["daemon-reload"]
        assert not wants.exists() and not wants.is_symlink(), "purge left the enablement link"
    finally:
        fake.unlink()
        shutil.rmtree(chroot.path("/run/systemd"))
        policy.write_text("#!/bin/sh\nexit 101\n")
        set_state(enabled=False, active=False)
        log.unlink(missing_ok=True)
        chroot.run("dpkg", "-P", "nmfailover")


# -- the releases ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_debian_12_installs_runs_and_removes_the_package(built: Build, tmp_path: Path) -> None:
    with debian_root("bookworm", tmp_path) as debian:
        started = time.monotonic()
        shutil.copy(built.deb, debian.path("/tmp"))
        deb = f"/tmp/{built.deb.name}"
        _installs_runs_and_removes_cleanly(debian, deb, built)
        _maintainer_scripts_enable_and_start_on_install(debian, deb)
        print(
            f"Debian 12: install, checks, remove, purge, maintainer scripts: {time.monotonic() - started:.0f} s"
        )


@pytest.mark.slow
def test_debian_13_builds_lints_and_installs_the_package(built: Build, tmp_path: Path) -> None:
    """The source package built on this machine, built again in a trixie root: by trixie's debhelper,
    against trixie's python3 3.13."""
    with debian_root("trixie", tmp_path) as debian:
        started = time.monotonic()
        _trust_the_hosts_local_cas(debian)
        build = debian.path("/build")
        build.mkdir()
        dsc = next(built.changes.parent.glob("nmfailover_*.dsc"))
        for name in re.findall(r"^ [0-9a-f]{64} \d+ (\S+)$", dsc.read_text(), re.MULTILINE) + [dsc.name]:
            shutil.copy(built.changes.parent / name, build)
        debian.run("apt-get", "build-dep", "-y", "-qq", "--no-install-recommends", f"/build/{dsc.name}")
        debian.run("update-ca-certificates")  # in case ca-certificates came before the host's CAs did
        debian.run("dpkg-source", "-x", f"/build/{dsc.name}", "/build/src")
        built_at = time.monotonic()
        debian.run("sh", "-c", "cd /build/src && dpkg-buildpackage -b -us -uc", home=True)
        print(f"Debian 13: build {time.monotonic() - built_at:.0f} s")
        (changes,) = build.glob("nmfailover_*.changes")
        (deb,) = build.glob("nmfailover_*.deb")

        info = debian.run("dpkg-deb", "--info", f"/build/{deb.name}").stdout
        assert re.search(r"^ Depends: .*python3 \(>= 3\.13\), python3 \(<< 3\.14\)", info, re.MULTILINE), info
        arch = debian.run("dpkg", "--print-architecture").stdout.strip()
        assert re.search(rf"^ Architecture: {arch}$", info, re.MULTILINE), info
        contents = debian.run("dpkg-deb", "--contents", f"/build/{deb.name}").stdout
        for expected in (
            r"\./usr/lib/systemd/system/nmfailover\.service",
            r"\./opt/nmfailover/lib/python3\.13/site-packages/pydantic_core/_pydantic_core\.cpython-313-.*\.so",
            r"\./opt/nmfailover/bin/python3 -> /usr/bin/python3",
            r"\./usr/bin/nmfailover -> /opt/nmfailover/bin/nmfailover",
        ):
            assert re.search(rf" {expected}$", contents, re.MULTILINE), expected
        assert "python3.11" not in contents

        linted = time.monotonic()
        debian.apt_install("lintian")
        lint = debian.run(
            "lintian",
            "--pedantic",
            "--display-info",
            "--fail-on",
            "none",
            f"/build/{changes.name}",  # the .deb built here
            f"/build/{dsc.name}",  # and the source package it came from
        ).stdout
        assert not _lintian_findings(lint), lint
        print(f"Debian 13: lintian (install and run) {time.monotonic() - linted:.0f} s")

        _installs_runs_and_removes_cleanly(debian, f"/build/{deb.name}", built)
        _maintainer_scripts_enable_and_start_on_install(debian, f"/build/{deb.name}")
        print(f"Debian 13: build, lintian, install, checks: {time.monotonic() - started:.0f} s")
