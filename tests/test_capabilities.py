"""What the service may do, and what every document says it may (issue 19, points 7 and 8).

The unit grants CAP_NET_RAW; the drop-in kernel-wireguard.conf adds CAP_NET_ADMIN for kernel WireGuard
tunnels outside NetworkManager. The README, the env file, the man page and the unit install-system-files
writes must say exactly that; systemd's own assessment pins the exposure the unit was measured at; the
daemon's capability check is run against the kernel's (setpriv drops CAP_NET_ADMIN from a real process).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmfailover import system_files, tunnels
from nmfailover.system_files import render_unit

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
UNIT = PACKAGING / "nmfailover.service"
DROP_IN = PACKAGING / tunnels.KERNEL_WIREGUARD_DROP_IN
# systemd-analyze security --offline=yes packaging/nmfailover.service on Debian 12 (systemd 252): 2.1 with
# CAP_NET_ADMIN in the unit, 1.9 without (the rest is root, the host's network, AF_PACKET for the passive
# watch, no IP address allow list).
EXPOSURE = 19  # tenths, as --threshold takes it
CAPABILITY = re.compile(r"\bCAP_[A-Z_]+\b")


def granted(unit_text: str) -> set[str]:
    """The capabilities a unit or drop-in adds to the bounding set (its lines add up)."""
    values = re.findall(r"^CapabilityBoundingSet=(.*)$", unit_text, re.MULTILINE)
    assert all(v.strip() and not v.startswith("~") for v in values), "no resets or inversions expected"
    return {cap for value in values for cap in value.split()}


def man_page() -> str:
    manpage = pytest.importorskip("nmfailover.manpage")
    # Roff escapes hyphens; the paragraphs are what lies between the macros.
    return str(manpage.render("man")).replace("\\-", "-")


def documents() -> dict[str, list[str]]:
    """Each document that speaks of capabilities, as paragraphs."""
    by_blank_lines = {
        "README.md": (REPO / "README.md").read_text(),
        "nmfailover.env": (PACKAGING / "nmfailover.env").read_text(),
        "nmfailover.service": UNIT.read_text(),
        "install-system-files' unit": render_unit(Path("/usr/local/bin/nmfailover")).decode(),
        "non-root.conf": (PACKAGING / "non-root.conf").read_text(),
        DROP_IN.name: DROP_IN.read_text(),
        **{f"hooks.d/{hook.name}": hook.read_text() for hook in (PACKAGING / "hooks.d").iterdir()},
    }
    paragraphs = {name: re.split(r"\n\s*\n", text) for name, text in by_blank_lines.items()}
    paragraphs["nmfailover.8"] = re.split(r"^\..*$", man_page(), flags=re.MULTILINE)
    paragraphs["the daemon's error"] = [tunnels.NEEDS_NET_ADMIN]
    return paragraphs


def test_the_unit_grants_cap_net_raw_and_the_drop_in_cap_net_admin() -> None:
    assert granted(UNIT.read_text()) == {"CAP_NET_RAW"}
    assert granted(DROP_IN.read_text()) == {"CAP_NET_ADMIN"}
    assert granted(render_unit(Path("/usr/local/bin/nmfailover")).decode()) == {"CAP_NET_RAW"}
    # The one drop-in: what install-system-files --kernel-wireguard writes, and what the daemon's error names.
    assert system_files.KERNEL_WIREGUARD_DROP_IN.name == DROP_IN.name
    assert system_files.data_file(DROP_IN.name) == DROP_IN.read_bytes()
    assert DROP_IN.name in tunnels.NEEDS_NET_ADMIN and "--kernel-wireguard" in tunnels.NEEDS_NET_ADMIN


def test_every_capability_a_document_names_is_granted_and_cap_net_admin_by_the_drop_in() -> None:
    base, drop_in = granted(UNIT.read_text()), granted(DROP_IN.read_text())
    for name, paragraphs in documents().items():
        for paragraph in paragraphs:
            for match in CAPABILITY.finditer(paragraph):
                if paragraph[: match.start()].rstrip(" `").endswith("without"):
                    continue  # what some user lacks, not what the service has
                where = f"{name}: {' '.join(paragraph.split())[:300]}"
                assert match.group() in base | drop_in, where
                if match.group() in drop_in - base:
                    assert DROP_IN.name in paragraph, f"CAP_NET_ADMIN without naming the drop-in: {where}"


def test_what_a_document_says_the_service_has_is_what_the_unit_grants() -> None:
    base = granted(UNIT.read_text())
    # "only `CAP_NET_RAW`", "no capability but CAP_NET_RAW": the whole of the unit's grant, in any document.
    statement = re.compile(r"(?:\bonly|no capability but)\s+`?(CAP_[A-Z_]+(?:`?(?:,| and)\s+`?CAP_[A-Z_]+)*)")
    found = 0
    for name, paragraphs in documents().items():
        for paragraph in paragraphs:
            for match in statement.finditer(" ".join(paragraph.split())):
                assert set(CAPABILITY.findall(match.group(1))) == base, f"{name}: {match.group()}"
                found += 1
    assert found >= 3  # the README, the env file and the man page each say it


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_assesses_the_unit_at_its_measured_exposure_and_the_drop_in_above(tmp_path: Path) -> None:
    def assess(unit: Path) -> tuple[int, dict[str, bool]]:
        done = subprocess.run(
            [
                "systemd-analyze",
                "security",
                "--offline=yes",
                f"--threshold={EXPOSURE}",
                "--json=short",
                str(unit),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "--offline" in done.stderr or "--json" in done.stderr:
            pytest.skip(f"systemd-analyze too old: {done.stderr.strip()}")
        return done.returncode, {i["name"]: i["set"] for i in json.loads(done.stdout)}

    code, items = assess(UNIT)
    assert code == 0, f"exposure above {EXPOSURE / 10}"
    assert items["CapabilityBoundingSet=~CAP_NET_ADMIN"] is True  # i.e. CAP_NET_ADMIN is not in the set
    # With the drop-in beside it, systemd reads the capability back in: the measure would see it.
    (tmp_path / f"{UNIT.name}.d").mkdir()
    shutil.copy(UNIT, tmp_path / UNIT.name)
    shutil.copy(DROP_IN, tmp_path / f"{UNIT.name}.d" / DROP_IN.name)
    code, items = assess(tmp_path / UNIT.name)
    assert code != 0 and items["CapabilityBoundingSet=~CAP_NET_ADMIN"] is False


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize(("drop", "expected"), [([], "True"), (["--bounding-set=-net_admin"], "False")])
def test_the_daemon_sees_whether_the_kernel_gives_it_cap_net_admin(drop: list[str], expected: str) -> None:
    if not (granted_now := tunnels.has_capability(tunnels.CAP_NET_ADMIN)):
        pytest.skip(f"this test process has no CAP_NET_ADMIN to drop ({granted_now})")
    code = (
        "from nmfailover.tunnels import CAP_NET_ADMIN, has_capability; print(has_capability(CAP_NET_ADMIN))"
    )
    done = subprocess.run(
        ["setpriv", *drop, "--", sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


@pytest.mark.parametrize(
    ("status", "net_admin"),
    [
        ("Name:\tpython3\nCapEff:\t000001ffffffffff\n", True),
        ("CapEff:\t0000000000002000\n", False),  # CAP_NET_RAW alone: the unit without the drop-in
        ("CapEff:\t0000000000003000\n", True),  # with it
        ("CapInh:\t0000000000001000\nCapEff:\t0000000000000000\n", False),
        ("Name:\tno capability lines\n", False),
    ],
)
def test_effective_capabilities_from_proc_status(status: str, net_admin: bool) -> None:
    assert bool(tunnels.effective_capabilities(status) >> tunnels.CAP_NET_ADMIN & 1) == net_admin
