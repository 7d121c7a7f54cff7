"""The desktop notice as a person sees it: the real daemon in a lab (its system bus configured like
Debian's, with the shipped policy, and the real polkitd with the shipped actions and rule), dunst on Xvfb
showing what `nmfailover notify` (run as nobody) sends, and the person pressing the notice's buttons."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from nmfailover.lab.demo import wait_for
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon
from tests.desktop import Desktop, polkit_authority, require_desktop_tools
from tests.operate import POLICY, status
from tests.test_control import _as_nobody
from tests.test_notify import Agent

# What the machine's administrator would not ship: nobody (the test's desktop user, in no session) may
# choose the uplink. The failover test stays behind the shipped rule, which wants the active local session.
NOBODY_MAY_PREFER = """polkit.addRule(function (action, subject) {
    if (action.id === "net.nmfailover.prefer" && subject.user === "nobody") {
        return polkit.Result.YES;
    }
});
"""
METERED = "Hotspot is metered: large downloads and updates may cost you."


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parent is private to root; nobody and polkitd must reach what is here.
    path = Path(tempfile.mkdtemp(prefix="nmfailover-desktop-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _shown(desktop: Desktop, count: int) -> list[tuple[str, str, str]]:
    return [(n["summary"], n["body"], n["urgency"]) for n in desktop.wait_notices(count)]


def test_the_notice_on_a_real_desktop(workdir: Path, lab_machine: None) -> None:
    require_desktop_tools("Xvfb", "dunst", "dunstctl", "dbus-daemon", "/usr/lib/polkit-1/polkitd", "pkaction")
    with ExitStack() as stack:
        lab = stack.enter_context(NMLab(2, bus_policy=POLICY))
        # The person's own names for the uplinks.
        for old, new in zip(list(lab.profiles), ("Fiber", "Hotspot"), strict=True):
            lab.nmcli("connection", "modify", old, "connection.id", new)
        lab.profiles[:] = ["Fiber", "Hotspot"]
        desktop = Desktop(stack, workdir)
        polkitd = stack.enter_context(polkit_authority(lab.bus_address, workdir, NOBODY_MAY_PREFER))
        actions = subprocess.run(
            ["pkaction", "--verbose", "--action-id", "net.nmfailover.test-failover"],
            env=lab.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert "implicit active:   auth_admin_keep" in actions.stdout, actions
        daemon = stack.enter_context(
            running_daemon(lab, workdir / "daemon.log", failback_hold_down="1", metered="Hotspot")
        )
        daemon.wait_log(r"ready: traffic on primary")

        # Logging in while traffic is on the backup already: told at once.
        lab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=30)
        agent = Agent(desktop.session_address, lab.bus_address, workdir / "agent.log")
        stack.callback(agent.kill)
        login = (
            "On Hotspot: Fiber is down",
            f"Traffic goes through Hotspot until Fiber works again. {METERED}",
        )
        assert _shown(desktop, 1) == [(*login, "NORMAL")]
        desktop.screenshot("notice-at-login")

        # Its button "Stay on Hotspot": Prefer through polkit, as the person (nobody) at the desktop.
        assert desktop.dunstctl("action", "0").returncode == 0
        staying = (
            "Staying on Hotspot",
            f"Traffic stays on Hotspot while it works, even when Fiber is back. {METERED}",
            "NORMAL",
        )
        assert _shown(desktop, 2)[1] == staying
        assert status(lab)["pinned"] == "backup"
        lab.upstreams[0].heal()
        wait_for(lambda: status(lab)["uplinks"][0]["health"] == "up", 30, "Fiber up again")
        assert lab.default_route(4) == "wanb"  # pinned: Fiber works, traffic stays

        # Its button "Prefer Fiber": the pin goes, and traffic goes back.
        assert desktop.dunstctl("action", "0").returncode == 0
        daemon.wait_route("wana", timeout=15)
        automatic, back = _shown(desktop, 4)[2:]
        assert automatic == (
            "Automatic choice again",
            "Traffic goes through the first uplink that works, in the configured order.",
            "LOW",
        )
        assert back[0] == "Back on Fiber" and back[2] == "LOW"
        # The metered Hotspot's data: what it carried in the outage, and the month so far.
        size = r"[\d.]+ (B|KiB|MiB)"
        assert re.fullmatch(
            rf"Fiber healthy for \d+s; moving back\. Hotspot carried {size} meanwhile\. This month: {size}\.",
            back[1],
        ), back

        # A failover while the person is there: said in their names, metered said, a button offered.
        lab.upstreams[0].blackhole()
        daemon.wait_route("wanb", timeout=30)
        failover = _shown(desktop, 5)[4]
        summary, body, urgency = failover
        assert (summary, urgency) == ("Fiber failed: now on Hotspot", "NORMAL")
        # The month's data on the metered Hotspot so far (the outage before this one).
        assert re.fullmatch(
            rf"Fiber is down; moving to Hotspot\. {re.escape(METERED)} This month: {size}\.", body
        )
        desktop.screenshot("notice-at-failover")
        # What dunst holds: closed now, it is its newest in history.
        assert desktop.dunstctl("close-all").returncode == 0
        newest = desktop.history()[0]
        assert (newest["appname"], newest["summary"], newest["category"]) == (
            "nmfailover",
            "Fiber failed: now on Hotspot",
            "network",
        )

        # The failover test is not granted to nobody: refused by the daemon after asking polkit.
        code, text = _as_nobody(lab, "test-failover", "--seconds", "30")
        assert code == 4 and "uid 65534 needs authentication for net.nmfailover.test-failover" in text, text
        assert "Error compiling script" not in (workdir / "polkitd.log").read_text()
        assert polkitd.poll() is None and agent.poll() is None
        assert agent.stop() == 0
        print(agent.text())
