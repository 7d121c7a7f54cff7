"""The bad-input catalogue: every setting and every command-line argument, fed wrong values.

Each case runs `nmfailover run` and `nmfailover check` (or the command under test) as a subprocess in the
sandbox's host namespace, against one NetworkManager shared by the whole module, and must give exit code 2,
exactly one line on stderr that names the variable or argument, and no change to NetworkManager: default
routes, the routes (and metrics) NetworkManager applied to each device, the profiles' settings and the
keyfiles on disk. Hostile strings must never reach a shell (a marker file must never appear).

The tables are checked for completeness against config.py and the argument parser, so a new variable or
option fails here until it has its bad values.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nmfailover import cli, config
from nmfailover.lab.demo import daemon_env
from nmfailover.lab.sandbox import NMLab
from tests.daemon import running_daemon

TIMEOUT = 8.0  # a wrongly accepted value starts the daemon (ready within 2 s): it is killed, the case fails
LONG = "x" * 5000
# {marker} is a file the test watches: any shell expanding these strings would create it.
HOSTILE = ("$(touch {marker})", "`touch {marker}`", "eth0; touch {marker}", "a\nb", LONG)
NOT_POSITIVE = ("", " ", "abc", "0", "-1", "nan", "inf", "1,5", "1e999")
# The same validator as NOT_POSITIVE's variable: its most telling values.
NOT_POSITIVE_SHORT = ("", "abc", "0", "-1", "nan")


@dataclass(frozen=True)
class Case:
    """Bad input: environment changes (None removes a variable) and the argument vector."""

    names: str  # what the one stderr line must name
    env: Mapping[str, str | None] = field(default_factory=dict)
    argv: tuple[str, ...] = ("run", "check")  # for settings: each command in turn

    def label(self) -> str:
        shown = {
            k: (v if v is None or len(v) <= 20 else v[:12] + f"...({len(v)})") for k, v in self.env.items()
        }
        return " ".join([*(f"{k}={v!r}" for k, v in shown.items()), *self.argv])


def bad(variable: str, *values: str, names: str | None = None, **extra: str | None) -> list[Case]:
    return [Case(names or variable, {variable: value, **extra}) for value in values]


def legacy(**env: str | None) -> dict[str, str | None]:
    """virtual-failover's variables instead of NMFAILOVER_UPLINKS."""
    return {"NMFAILOVER_UPLINKS": None, "PRIMARY_CONNECTION": "primary", "BACKUP_CONNECTION": "backup", **env}


UPLINKS = "NMFAILOVER_UPLINKS"
ENV_CASES: list[Case] = [
    *bad(UPLINKS, ",", "primary", "primary,primary", "primary,,backup", "primary, ,backup"),
    *bad(UPLINKS, "primary,nosuch", "nosuch,backup", "primary,nodefault", "primary,{primary_uuid}"),
    *bad(UPLINKS, *(f"primary,{h}" for h in HOSTILE)),
    Case(UPLINKS, {"PRIMARY_CONNECTION": "primary"}),  # both ways at once
    *(Case("PRIMARY_CONNECTION", legacy(PRIMARY_CONNECTION=v)) for v in ("", " ", None)),
    *(Case("PRIMARY_CONNECTION", legacy(PRIMARY_CONNECTION=v)) for v in ("nosuch", "nodefault", *HOSTILE)),
    *(
        Case("BACKUP_CONNECTION", legacy(BACKUP_CONNECTION=v))
        for v in ("", None, "primary", "nosuch", *HOSTILE)
    ),
    *(Case("FALLBACK_CONNECTION", legacy(FALLBACK_CONNECTION=v)) for v in ("primary", "nosuch", "nodefault")),
    *bad(
        "NMFAILOVER_PROBE_URLS",
        "",
        " ",
        ",",
        "ftp://target1.test/",
        "target1.test",
        "http://",
        "http:///x",
        "http://target1.test:99999/",
        "http://target1.test/ 99",
        "http://target1.test/ abc",
        "http://target1.test/generate_204 204,",
        "http://$(touch {marker})/",
        "http://a\nb/",
    ),
    *bad("NMFAILOVER_PROBE_TIMEOUT", *NOT_POSITIVE, "2", "10"),
    *bad("NMFAILOVER_PROBE_QUORUM", "", "0", "-1", "1.5", "abc", "4"),
    *bad("NMFAILOVER_ACTIVE_INTERVAL", *NOT_POSITIVE_SHORT, "inf"),
    *bad("NMFAILOVER_ACTIVE_INTERVAL", "0.25", names="NMFAILOVER_ACTIVE_INTERVAL"),  # below the suspect one
    *bad("PRIMARY_CHECK_INTERVAL_IN_SECONDS", "abc", "0", "-5"),
    *bad("NMFAILOVER_STANDBY_INTERVAL", *NOT_POSITIVE_SHORT, "0.5"),  # 0.5: below the probe timeout
    *bad("BACKUP_CHECK_INTERVAL_IN_SECONDS", "abc", "0"),
    *bad("NMFAILOVER_SUSPECT_INTERVAL", *NOT_POSITIVE_SHORT, "3"),
    *bad("NMFAILOVER_HEARTBEAT", "", "maybe", "2"),
    *bad("NMFAILOVER_PROOF_INTERVAL", *NOT_POSITIVE_SHORT, "0.5"),  # 0.5: below the active interval
    *bad("NMFAILOVER_STANDBY_PROOF_INTERVAL", *NOT_POSITIVE_SHORT, "10"),  # below the standby interval
    *bad("NMFAILOVER_ECHO_BURST", "", "0", "-1", "1.5", "abc"),
    *bad("NMFAILOVER_LOSS_EXCUSES", "", "-1", "1.5", "abc"),
    *bad("NMFAILOVER_IPV6_INTERVAL", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_DNS_CHECK_INTERVAL", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_HTTP_CHECK_INTERVAL", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_TRAFFIC_CHECK_INTERVAL", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_LOSS_TOLERATED", "", "abc", "-1", "100", "nan", "70"),  # 70: above the heavy share
    *bad("NMFAILOVER_LOSS_HEAVY", "", "abc", "0", "100", "nan", "20"),  # 20: below the tolerated share
    *bad("NMFAILOVER_PASSIVE", "", "maybe", "2"),
    *bad("NMFAILOVER_PASSIVE_SYN_PATIENCE", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_PASSIVE_DNS_PATIENCE", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_DNS_FAILOVER", "", "maybe", "2"),
    *bad("NMFAILOVER_DNS_SERVERS", "resolver.example", "192.0.2.1,", "192.0.2.300"),
    *bad("NMFAILOVER_FAIL_COUNT", "", "0", "-1", "2.5", "abc", "1e3"),
    *bad("NMFAILOVER_RISE_COUNT", "", "0", "-1", "2.5", "abc"),
    *bad("NMFAILOVER_FAILBACK_HOLD_DOWN", "", "abc", "-1", "nan", "inf"),
    *bad("NMFAILOVER_FAILBACK_HOLD_DOWN_MAX", "", "abc", "-1", "inf", "10"),  # 10: below the hold-down
    *bad("NMFAILOVER_FLAP_WINDOW", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_PROBE_TIMEOUT_MIN", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_BUSY_RX_RATE", "", "abc", "-1", "1.5"),
    *bad("NMFAILOVER_BROWNOUT_WINDOW", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_BROWNOUT_LOSS", "", "abc", "0", "-5", "101"),
    *bad("NMFAILOVER_BROWNOUT_LATENCY", "", "abc", "1", "0.5", "inf"),
    *bad(
        "NMFAILOVER_METRICS_LISTEN",
        "0.0.0.0:9469",
        "192.0.2.1:9469",
        "localhost:9469",
        "127.0.0.1",
        "127.0.0.1:99999",
    ),
    *bad(
        "NMFAILOVER_METRICS_TEXTFILE", "relative.prom", "/nonexistent/nmfailover.prom", "{files}/metrics.txt"
    ),
    *bad("NMFAILOVER_METRICS_TEXTFILE_INTERVAL", *NOT_POSITIVE_SHORT),
    *bad("NMFAILOVER_METRIC_BASE", "", "abc", "-1", "1.5", "4294967296", "4294967295"),
    *bad("NMFAILOVER_METRIC_STEP", "", "abc", "0", "-100", "4294967295"),
    *bad("NMFAILOVER_MANAGE_AUTOCONNECT_PRIORITY", "", "maybe", "2", "on", "$(touch {marker})"),
    *bad("NMFAILOVER_METERED", "nosuch", "backup,nodefault", "fallback", ",", "backup,backup", *HOSTILE),
    *bad("NMFAILOVER_ON_DEMAND", "nosuch", "fallback", ",", "backup,backup", *HOSTILE),
    *bad("NMFAILOVER_ON_DEMAND_LINGER", "", "abc", "-1", "inf"),
    *bad("NMFAILOVER_METERED_BUDGET", "5 GiG", "abc", "-1", "0", "0.5", "1.5.0GB", "GiB", "5 GiB 2"),
    *bad("NMFAILOVER_METERED_BUDGET_WARN", "0", "101", "95,75", "75,75", "75,", "half", "7.5", "-5"),
    *bad("NMFAILOVER_SOURCE_ROUTING", "", "maybe", "2", "$(touch {marker})"),
    # 252: the backup would get 253; 4294967295: the backup's would not fit in 32 bits.
    *bad("NMFAILOVER_SOURCE_ROUTING_TABLE", "", "abc", "0", "-1", "1.5", "253", "254", "255", "252"),
    *bad("NMFAILOVER_SOURCE_ROUTING_TABLE", "4294967295", "4294967296"),
    *bad("NMFAILOVER_SOURCE_ROUTING_PRIORITY", "", "abc", "0", "-1", "1.5", "32765", "32766", "40000"),
    *bad("NMFAILOVER_MPTCP", "", "maybe", "2"),
    *bad("NMFAILOVER_LOG_LEVEL", "", "verbose", "5", "$(touch {marker})"),
    *bad("NMFAILOVER_HOOKS_DIR", "/nonexistent/hooks.d", "{files}/not-a-dir", "$(touch {marker})"),
    *bad("NMFAILOVER_HOOK_TIMEOUT", *NOT_POSITIVE_SHORT),
    *bad(
        "NMFAILOVER_FAILBACK_GUARD",
        "relative/guard",
        "/nonexistent/guard",
        "{files}/not-executable",
        "{files}",
        "$(touch {marker})",
    ),
    *bad("NMFAILOVER_FAILBACK_GUARD_TIMEOUT", "", "0", "abc", "inf"),
    *bad(
        "NMFAILOVER_WEBHOOK_URL",
        "ftp://192.0.2.1/",
        "http://",
        "192.0.2.1/hook",
        "http://192.0.2.1:99999/",
        "http://$(touch {marker})/",
        "http://a\nb/",
    ),
    # nosuch0: no interface at all; wana: an interface, but not WireGuard (both found only at start).
    *bad("NMFAILOVER_WIREGUARD_FOLLOW", "nosuch0", "wana", "wana,nosuch0", "auto,wg0", "wg0,wg0", ","),
    *bad("NMFAILOVER_WIREGUARD_FOLLOW", "a/b", "a:b", "sixteen-chars-xx", *HOSTILE),
    *bad(
        "NMFAILOVER_ENV_FILE",
        "/nonexistent/nmfailover.env",
        "{files}",
        "{files}/bad-line.env",
        "{files}/latin1.env",
    ),
    Case("NMFAILOVER_FAIL_COUNT", {"NMFAILOVER_ENV_FILE": "{files}/bad-value.env"}),
    Case("NMFAILOVER_FAIL_COUNTS", {"NMFAILOVER_ENV_FILE": "{files}/typo.env"}),
    *bad("NMFAILOVER_FAIL_COUNTS", "3"),  # a typo must not fall back to the default silently
    *bad("NMFAILOVER_$(touch {marker})", "1"),
]

# Command-line arguments. Settings are valid here, so only the argument can be at fault.
CLI_CASES: list[Case] = [
    Case("command", argv=()),
    Case("frobnicate", argv=("frobnicate",)),
    Case("--bogus", argv=("--bogus", "run")),
    Case("$(touch {marker})", argv=("$(touch {marker})",)),
    Case("extra", argv=("run", "extra")),
    Case("--json", argv=("run", "--json")),
    Case("extra", argv=("check", "extra")),
    Case("--json", argv=("check", "--json=yes")),
    Case("--bogus", argv=("check", "--bogus")),
    Case("stauts", argv=("stauts",)),
    Case("--root", argv=("install-system-files", "--root", "/nonexistent")),
    Case("--root", argv=("install-system-files", "--root")),
    Case("--remove", argv=("install-system-files", "--remove", "--force")),
    Case("--remove", argv=("install-system-files", "--remove", "--non-root")),
    Case("--non-root", argv=("install-system-files", "--non-root=yes")),
    Case("--kernel-wireguard", argv=("install-system-files", "--remove", "--kernel-wireguard")),
    Case("--kernel-wireguard", argv=("install-system-files", "--kernel-wireguard=yes")),
    Case("extra", argv=("install-system-files", "extra")),
    Case("--root", argv=("doctor", "--root", "/nonexistent")),
    Case("--root", argv=("doctor", "--root")),
    Case("extra", argv=("doctor", "extra")),
    *(Case("--flap-count", argv=("notify", "--flap-count", v)) for v in ("", "0", "-1", "abc")),
    *(Case("--flap-window", argv=("notify", "--flap-window", v)) for v in ("", "0", "abc", "inf")),
    Case("--no-tray", argv=("notify", "--no-tray=yes")),
    Case("extra", argv=("notify", "extra")),
]

# Commands that talk to the running daemon: a daemon runs for these (its steady state is the baseline).
CLIENT_CASES: list[Case] = [
    Case("extra", argv=("status", "extra")),
    Case("--json", argv=("status", "--json=yes")),
    Case("--bogus", argv=("status", "--bogus")),
    Case("--interval", argv=("status", "--interval", "5")),  # without --follow
    Case("--interval", argv=("status", "--follow", "--interval", "0")),
    Case("--interval", argv=("status", "--follow", "--interval", "abc")),
    Case("--follow", argv=("status", "--follow=yes")),
    Case("--interface", argv=("recheck", "--interface")),
    Case("--reason", argv=("recheck", "--reason")),
    Case("extra", argv=("recheck", "extra")),
    *(
        Case("--seconds", argv=("test-failover", "--seconds", v))
        for v in ("", "abc", "0", "-1", "nan", "inf")
    ),
    Case("--end", argv=("test-failover", "--seconds", "5", "--end")),
    Case("extra", argv=("test-failover", "extra")),
    Case("prefer", argv=("prefer",)),
    Case("--clear", argv=("prefer", "primary", "--clear")),
    Case("--clear", argv=("prefer", "--clear", "--seconds", "5")),
    *(Case("--seconds", argv=("prefer", "primary", "--seconds", v)) for v in ("", "abc", "-1", "nan", "inf")),
    *(Case(v, argv=("prefer", v)) for v in ("nosuch", "$(touch {marker})", "eth0; touch {marker}")),
    Case("a\\nb", argv=("prefer", "a\nb")),
    Case("xxxxxxxxxx", argv=("prefer", LONG)),
]

# `recheck --interface` takes any name on purpose (a dispatcher hook passes whatever interface changed):
# hostile names must be harmless, not refused.
RECHECK_HARMLESS = [Case("", argv=("recheck", "--interface", h, "--reason", h)) for h in HOSTILE]

# `demo` builds a sandbox when its arguments are accepted, so its table runs in-process with the sandbox
# replaced by a stub that records whether it was reached.
DEMO_CASES: list[Case] = [
    *(Case("--hold-down", argv=("demo", "--hold-down", v)) for v in ("", "abc", "-5", "nan", "inf")),
    Case("extra", argv=("demo", "extra")),
]


# -- the shared lab and what "no change" means -----------------------------------------------------------------


@dataclass
class Bench:
    lab: NMLab
    files: Path
    marker: Path
    primary_uuid: str
    baseline: dict[str, Any] = field(default_factory=dict)  # NetworkManager as every case must leave it

    def fill(self, text: str) -> str:
        return (
            text.replace("{marker}", str(self.marker))
            .replace("{files}", str(self.files))
            .replace("{primary_uuid}", self.primary_uuid)
        )

    def env(self, case: Case) -> dict[str, str]:
        env = daemon_env(self.lab)
        for name, value in case.env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[self.fill(name)] = self.fill(value)
        return env

    def nm_state(self) -> dict[str, Any]:
        lab = self.lab
        return {
            "routes": (lab.default_routes(4), lab.default_routes(6)),
            # NetworkManager's own view of each device: its routes with the metrics it applied.
            "devices": lab.nmcli(
                "-t", "-f", "GENERAL.DEVICE,GENERAL.STATE,IP4.ROUTE,IP6.ROUTE", "device", "show"
            ),
            "profiles": lab.nmcli(
                "-t",
                "-f",
                "connection.id,connection.uuid,connection.autoconnect-priority,"
                "ipv4.route-metric,ipv6.route-metric,ipv4.never-default",
                "connection",
                "show",
                "primary",
                "backup",
                "nodefault",
            ),
            "keyfiles": lab.profiles_on_disk(),
        }

    def restore(self) -> None:
        """After a case that changed NetworkManager: fresh activations bring the profiles' own values back."""
        for profile in self.lab.profiles:
            self.lab.nmcli("connection", "up", profile, check=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, lab_machine: None) -> Iterator[Bench]:
    files = tmp_path_factory.mktemp("bad-input")
    (files / "not-a-dir").write_text("")
    (files / "not-executable").write_text("#!/bin/sh\nexit 0\n")
    (files / "bad-line.env").write_text("NMFAILOVER_FAIL_COUNT=2\nthis is not an assignment\n")
    (files / "latin1.env").write_bytes("NMFAILOVER_LOG_LEVEL=INFO # caf\xe9\n".encode("latin-1"))
    (files / "bad-value.env").write_text("NMFAILOVER_FAIL_COUNT=0\n")
    (files / "typo.env").write_text("NMFAILOVER_FAIL_COUNTS=3\n")
    with NMLab(2) as lab:
        # Applying it would never give a default route: naming it as an uplink must be refused.
        lab.nmcli(
            "connection",
            "add",
            "type",
            "ethernet",
            "ifname",
            "wanz",
            "con-name",
            "nodefault",
            "autoconnect",
            "no",
            "ipv4.method",
            "manual",
            "ipv4.addresses",
            "198.51.100.2/24",
            "ipv4.never-default",
            "yes",
            "ipv6.method",
            "disabled",
        )
        uuid = lab.nmcli("-g", "connection.uuid", "connection", "show", "primary").strip()
        bench = Bench(lab, files, files / "pwned", uuid)
        bench.baseline = bench.nm_state()
        yield bench


def start_cli(bench: Bench, argv: tuple[str, ...], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return bench.lab.popen_host(
        [sys.executable, "-m", "nmfailover", *(bench.fill(a) for a in argv)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        return -1, f"still running after {TIMEOUT:g} s: the value was accepted"


def check_refusal(bench: Bench, case: Case, argvs: list[tuple[str, ...]]) -> None:
    env = bench.env(case)
    # Side by side: a refusal changes nothing, so neither can disturb the other; it halves the wait.
    procs = [(argv, start_cli(bench, argv, env)) for argv in argvs]
    results = [(argv, *finish(proc)) for argv, proc in procs]
    after = bench.nm_state()
    changed = after != bench.baseline
    if changed:
        bench.restore()
        bench.baseline = bench.nm_state()
    assert not bench.marker.exists(), "a hostile string reached a shell"
    for argv, code, err in results:
        lines = err.strip().splitlines()
        where = f"{' '.join(argv)[:60]!r}: exit {code}, stderr {err[-600:]!r}"
        assert code == 2, where
        assert len(lines) == 1, where
        assert bench.fill(case.names)[:40] in lines[0] or case.names[:40] in lines[0], where
        assert "Traceback" not in err
    assert not changed, "NetworkManager changed"


def _ids(cases: list[Case]) -> list[Any]:
    return [pytest.param(case, id=case.label()[:80]) for case in cases]


@pytest.mark.parametrize("case", _ids(ENV_CASES))
def test_bad_setting_is_refused_before_anything_changes(bench: Bench, case: Case) -> None:
    check_refusal(bench, case, [("run",), ("check",)])


@pytest.mark.parametrize("case", _ids(CLI_CASES))
def test_bad_argument_is_refused(bench: Bench, case: Case) -> None:
    check_refusal(bench, case, [case.argv])


@pytest.fixture(scope="module")
def daemon(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("daemon") / "daemon.log"
    with running_daemon(bench.lab, log) as process:
        process.wait_log(r"ready: traffic on primary")
        time.sleep(0.5)  # its metrics and priorities are applied just before "ready"; let them show
        bench.baseline = bench.nm_state()
        yield
        assert process.stop() == 0
    bench.restore()
    bench.baseline = bench.nm_state()


@pytest.mark.parametrize("case", _ids(CLIENT_CASES))
def test_bad_argument_to_the_running_daemon_is_refused(bench: Bench, daemon: None, case: Case) -> None:
    check_refusal(bench, case, [case.argv])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.label()[:80]) for c in RECHECK_HARMLESS])
def test_hostile_interface_name_for_recheck_is_harmless(bench: Bench, daemon: None, case: Case) -> None:
    proc = start_cli(bench, case.argv, bench.env(case))
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out.strip() == "re-checking 2 uplink(s)"
    assert not bench.marker.exists()
    assert bench.nm_state() == bench.baseline


@pytest.mark.parametrize("case", _ids(DEMO_CASES))
def test_bad_demo_argument_is_refused_without_building_a_sandbox(
    case: Case, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nmfailover.lab import demo

    reached: list[float] = []

    def run_demo(hold_down: float = 10.0) -> int:
        reached.append(hold_down)
        return 0

    monkeypatch.setattr(demo, "run_demo", run_demo)
    code = cli.main(list(case.argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert not reached, "the sandbox would have been built"
    assert code == 2
    assert len(lines) == 1 and case.names in lines[0], lines


# -- completeness: a new variable or option needs its bad values here -----------------------------------------


def test_every_variable_is_in_the_catalogue() -> None:
    covered = {name for case in ENV_CASES for name in case.env}
    assert config._known_variables() <= covered, sorted(config._known_variables() - covered)


def _options() -> dict[str, set[str]]:
    parser = cli.build_parser()
    commands: dict[str, set[str]] = {}
    for action in parser._actions:  # argparse keeps its subcommands only here
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for name, sub in choices.items():
                commands[name] = {
                    o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")
                }
    return commands


def test_every_command_and_option_is_in_the_catalogue() -> None:
    cases = CLI_CASES + CLIENT_CASES + DEMO_CASES
    for command, options in _options().items():
        argvs = [c.argv for c in cases if c.argv[:1] == (command,)]
        assert argvs, f"no bad-input case for `nmfailover {command}`"
        missing = {
            o for o in options if not any(o in a or any(x.startswith(o + "=") for x in a) for a in argvs)
        }
        assert not missing, f"`nmfailover {command}`: no bad-input case for {sorted(missing)}"


def test_catalogue_size() -> None:
    runs = 2 * len(ENV_CASES) + len(CLI_CASES) + len(CLIENT_CASES) + len(RECHECK_HARMLESS) + len(DEMO_CASES)
    print(
        f"bad-input catalogue: {len(ENV_CASES)} settings cases (each under run and check), "
        f"{len(CLI_CASES) + len(CLIENT_CASES) + len(DEMO_CASES)} argument cases, {len(RECHECK_HARMLESS)} "
        f"harmless recheck names: {runs} invocations"
    )
    assert len(ENV_CASES) >= 100
