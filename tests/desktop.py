"""A headless desktop for the tests: Xvfb, a private session bus, dunst (a real notification server),
headless sway with waybar (a real tray: StatusNotifierWatcher and host) and polkitd (the real authority) on
a lab's system bus, with the shipped polkit actions and rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.test_notify import SESSION_CONFIG, BusDaemon, wait_for

ROOT = Path(__file__).resolve().parent.parent
POLKIT = ROOT / "packaging" / "polkit"
TOOLS = {
    "Xvfb": "xvfb",
    "dunst": "dunst",
    "dunstctl": "dunst",
    "/usr/lib/polkit-1/polkitd": "polkitd",
    "pkaction": "polkitd",
    "dbus-daemon": "dbus",
    "sway": "sway",
    "waybar": "waybar",
}
NOBODY = 65534
# Adwaita, which GTK brings, draws network icons only in their -symbolic names; Tango (apt package
# tango-icon-theme, where installed) draws the plain freedesktop names, for screenshots a person reads.
SCREENSHOT_ICONS = "/usr/share/icons/Tango"


def require_desktop_tools(*tools: str) -> None:
    """Fail in CI, else skip, unless `tools` (default: all of them) are installed and this is root."""
    wanted = tools or tuple(TOOLS)
    missing = sorted({TOOLS[tool] for tool in wanted if shutil.which(tool) is None})
    problem = f"needs apt packages {', '.join(missing)}" if missing else None
    if problem is None and os.geteuid() != 0:
        problem = "needs root (polkitd in a mount namespace, the agent as nobody)"
    if problem is None:
        return
    # CI installs them: a skip there would hide a broken setup.
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Desktop:
    """A display with dunst on it, and a session bus. Every notification dunst shows is logged by a dunst
    rule's script, with what dunst made of it (summary, body, urgency...), one JSON line each."""

    def __init__(self, stack: ExitStack, workdir: Path) -> None:
        self.workdir = workdir
        read, write = os.pipe()
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", "800x300x24", "-nolisten", "tcp"],
            pass_fds=(write,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write)
        stack.callback(_stop, xvfb)
        with os.fdopen(read) as displayfd:
            self.display = f":{displayfd.readline().strip()}"
        session = BusDaemon(SESSION_CONFIG, workdir, "session")
        stack.callback(session.stop)
        self.session_address = session.address
        self.env = dict(os.environ, DISPLAY=self.display, DBUS_SESSION_BUS_ADDRESS=session.address)
        self.shown = workdir / "shown.jsonl"
        script = workdir / "shown.sh"
        script.write_text(
            "#!/bin/sh\nexec python3 -c 'import json, os; print(json.dumps({k[6:].lower(): v for k, v in "
            f'os.environ.items() if k.startswith("DUNST_")}}))\' >> {self.shown}\n'
        )
        script.chmod(0o755)
        config = workdir / "dunstrc"
        config.write_text(
            "[global]\n    font = DejaVu Sans 11\n    width = 420\n    offset = 10x10\n"
            f"    icon_path = {SCREENSHOT_ICONS}/32x32/status:{SCREENSHOT_ICONS}/32x32/devices\n"
            f'[record]\n    summary = "*"\n    script = {script}\n'
        )
        dunst = _spawn(["dunst", "-config", str(config)], workdir / "dunst.log", self.env)
        stack.callback(_stop, dunst)
        wait_for("dunst on the session bus", lambda: self.dunstctl("count").returncode == 0, 10)

    def dunstctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["dunstctl", *args], env=self.env, capture_output=True, text=True, check=False, timeout=10
        )

    def notices(self) -> list[dict[str, str]]:
        if not self.shown.exists():
            return []
        return [json.loads(line) for line in self.shown.read_text().splitlines()]

    def wait_notices(self, count: int, timeout: float = 20) -> list[dict[str, str]]:
        wait_for(f"{count} notice(s) shown by dunst", lambda: len(self.notices()) >= count, timeout)
        return self.notices()

    def history(self) -> list[dict[str, str]]:
        """`dunstctl history`: the notices closed so far, newest first."""
        result = self.dunstctl("history")
        assert result.returncode == 0, result.stderr
        (entries,) = json.loads(result.stdout)["data"]
        return [{key: value["data"] for key, value in entry.items()} for entry in entries]

    def screenshot(self, name: str) -> None:
        """Saved only where NMFAILOVER_TEST_SCREENSHOTS names a directory: for a person to look at (needs
        imagemagick's `import`, which CI does without)."""
        directory = os.environ.get("NMFAILOVER_TEST_SCREENSHOTS")
        if directory:
            path = Path(directory) / f"{name}.png"
            subprocess.run(["import", "-window", "root", str(path)], env=self.env, check=True, timeout=20)


@contextmanager
def polkit_authority(bus_address: str, workdir: Path, extra_rules: str) -> Iterator[subprocess.Popen[bytes]]:
    """The real polkitd on `bus_address`, in a mount namespace of its own where it finds the machine's
    actions plus the shipped ones, and only the shipped rules plus `extra_rules` in /etc/polkit-1/rules.d."""
    actions, rules = workdir / "polkit-actions", workdir / "polkit-rules"
    shutil.copytree("/usr/share/polkit-1/actions", actions)
    shutil.copy(POLKIT / "net.nmfailover.policy", actions)
    rules.mkdir()
    shutil.copy(POLKIT / "60-nmfailover-desktop.rules", rules)
    (rules / "10-test.rules").write_text(extra_rules)
    log = workdir / "polkitd.log"
    proc = _spawn(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount --bind "$1" /usr/share/polkit-1/actions && mount --bind "$2" /etc/polkit-1/rules.d '
            "&& exec /usr/lib/polkit-1/polkitd",
            "sh",
            str(actions),
            str(rules),
        ],
        log,
        dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus_address),
    )
    try:
        wait_for(
            "polkitd's rules", lambda: "Finished loading, compiling and executing" in log.read_text(), 15
        )
        yield proc
    finally:
        _stop(proc)
        print(f"--- polkitd\n{log.read_text()}")


class Panel:
    """Headless sway (as nobody: it refuses root) running waybar with its tray, the StatusNotifierWatcher
    and host, on `session_address`."""

    def __init__(self, stack: ExitStack, workdir: Path, session_address: str) -> None:
        self.runtime = workdir / "sway-run"
        self.runtime.mkdir(mode=0o700)
        os.chown(self.runtime, NOBODY, NOBODY)
        (workdir / "waybar.json").write_text(
            json.dumps(
                {
                    "layer": "top",
                    "position": "top",
                    "height": 32,
                    "modules-left": ["clock"],
                    "modules-right": ["tray"],
                    "tray": {"icon-size": 22, "spacing": 8},
                }
            )
        )
        (workdir / "sway.conf").write_text(
            f"output HEADLESS-1 resolution 640x200\nexec waybar -c {workdir / 'waybar.json'} -l debug\n"
        )
        self.env = dict(
            os.environ,
            DBUS_SESSION_BUS_ADDRESS=session_address,
            XDG_RUNTIME_DIR=str(self.runtime),
            HOME=str(self.runtime),
            WLR_BACKENDS="headless",
            WLR_LIBINPUT_NO_DEVICES="1",
            WLR_RENDERER="pixman",
            GSETTINGS_BACKEND="keyfile",
        )
        # GTK on Wayland takes its icon theme from GSettings: a keyfile backend names the screenshots' one.
        settings = self.runtime / ".config" / "glib-2.0" / "settings"
        settings.mkdir(parents=True)
        theme = Path(SCREENSHOT_ICONS).name
        (settings / "keyfile").write_text(f"[org/gnome/desktop/interface]\nicon-theme='{theme}'\n")
        for path in (self.runtime / ".config", settings.parent, settings, settings / "keyfile"):
            os.chown(path, NOBODY, NOBODY)
        self.log = workdir / "sway.log"
        sway = _spawn(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "sway",
                "-c",
                str(workdir / "sway.conf"),
            ],
            self.log,
            self.env,
        )
        stack.callback(_stop, sway)
        wait_for("sway's Wayland socket", lambda: (self.runtime / "wayland-1").exists(), 20)
        self.env["WAYLAND_DISPLAY"] = "wayland-1"

    def screenshot(self, name: str) -> None:
        """Saved only where NMFAILOVER_TEST_SCREENSHOTS names a directory, with grim."""
        directory = os.environ.get("NMFAILOVER_TEST_SCREENSHOTS")
        if directory:
            shot = self.runtime / "shot.png"
            subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "grim", str(shot)],
                env=self.env,
                check=True,
                timeout=20,
            )
            shutil.copy(shot, Path(directory) / f"{name}.png")
