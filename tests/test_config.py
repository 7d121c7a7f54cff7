import ctypes
import functools
import glob
import itertools
import random
import re
from pathlib import Path
from typing import Any

import pytest

from nmfailover import config, errors
from nmfailover.config import (
    MAX_METRIC,
    ConfigError,
    EnvFileError,
    Settings,
    load_settings,
    parse_env_file,
)
from nmfailover.probe import DEFAULT_TARGETS, parse_target

UPLINKS = {"NMFAILOVER_UPLINKS": "eth0,wwan0"}
N_TARGETS = len(DEFAULT_TARGETS)


@pytest.fixture(autouse=True)
def no_default_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # A real /etc/nmfailover/nmfailover.env on the test machine must not change the results.
    path = tmp_path / "default.env"
    monkeypatch.setattr(config, "DEFAULT_ENV_FILE", path)
    return path


DEFAULTS: dict[str, Any] = {
    "uplinks": ("eth0", "wwan0"),
    "probe_targets": DEFAULT_TARGETS,
    "probe_timeout": 1.0,
    "probe_quorum": 1,
    "active_interval": 1.0,
    "standby_interval": 30.0,
    "suspect_interval": 0.5,
    "heartbeat": True,
    "proof_interval": 300.0,
    "standby_proof_interval": 300.0,
    "dns_check_interval": 15.0,
    "http_check_interval": 15.0,
    "traffic_check_interval": 3.0,
    "passive": True,
    "passive_syn_patience": 0.4,
    "passive_dns_patience": 1.0,
    "loss_tolerated": 28.0,
    "loss_heavy": 60.0,
    "dns_failover": True,
    "dns_servers": (),
    "fail_count": 2,
    "rise_count": 3,
    "failback_hold_down": 30.0,
    "metric_base": 100,
    "metric_step": 100,
    "manage_autoconnect_priority": True,
    "on_demand": (),
    "on_demand_linger": 30.0,
    "metered_budget": None,
    "metered_budget_warn": (75, 95),
    "log_level": "INFO",
}

VALID: list[Any] = [
    pytest.param(UPLINKS, {}, id="defaults"),
    pytest.param(
        {
            "NMFAILOVER_UPLINKS": "lan, 5f3c0e9a-1111-2222-3333-444455556666 ,wwan0",
            "NMFAILOVER_PROBE_URLS": "https://a.example/, http://b.example/x 200 all is well",
            "NMFAILOVER_PROBE_TIMEOUT": "0.75",
            "NMFAILOVER_PROBE_QUORUM": "2",
            "NMFAILOVER_ACTIVE_INTERVAL": "3",
            "NMFAILOVER_STANDBY_INTERVAL": "60",
            "NMFAILOVER_SUSPECT_INTERVAL": "0.25",
            "NMFAILOVER_FAIL_COUNT": "4",
            "NMFAILOVER_RISE_COUNT": "5",
            "NMFAILOVER_FAILBACK_HOLD_DOWN": "0",
            "NMFAILOVER_METRIC_BASE": "0",
            "NMFAILOVER_METRIC_STEP": "1",
            "NMFAILOVER_MANAGE_AUTOCONNECT_PRIORITY": "no",
            "NMFAILOVER_LOG_LEVEL": "debug",
            "NMFAILOVER_ENV_FILE": "",
            "NMFAILOVER_DNS_SERVERS": "192.0.2.53, 2001:db8::53",
            "NMFAILOVER_LOSS_TOLERATED": "10",
            "NMFAILOVER_LOSS_HEAVY": "40.5",
            "NMFAILOVER_PASSIVE": "no",
            "NMFAILOVER_METERED_BUDGET": " 1.5GiB ",
            "NMFAILOVER_METERED_BUDGET_WARN": "50, 80,100",
        },
        {
            "uplinks": ("lan", "5f3c0e9a-1111-2222-3333-444455556666", "wwan0"),
            "probe_targets": (
                parse_target("https://a.example/"),
                parse_target("http://b.example/x 200 all is well"),
            ),
            "probe_timeout": 0.75,
            "probe_quorum": 2,
            "active_interval": 3.0,
            "standby_interval": 60.0,
            "suspect_interval": 0.25,
            "fail_count": 4,
            "rise_count": 5,
            "failback_hold_down": 0.0,
            "metric_base": 0,
            "metric_step": 1,
            "manage_autoconnect_priority": False,
            "log_level": "DEBUG",
            "dns_servers": ("192.0.2.53", "2001:db8::53"),
            "metered_budget": 1610612736,
            "metered_budget_warn": (50, 80, 100),
            "loss_tolerated": 10.0,
            "loss_heavy": 40.5,
            "passive": False,
        },
        id="every-variable",
    ),
    pytest.param({"PRIMARY_CONNECTION": "eth0", "BACKUP_CONNECTION": "wwan0"}, {}, id="legacy-two"),
    pytest.param(
        {"PRIMARY_CONNECTION": "eth0", "BACKUP_CONNECTION": "wwan0", "FALLBACK_CONNECTION": " wlan0 "},
        {"uplinks": ("eth0", "wwan0", "wlan0")},
        id="legacy-three",
    ),
    pytest.param(
        {"PRIMARY_CONNECTION": "eth0", "BACKUP_CONNECTION": "wwan0", "FALLBACK_CONNECTION": ""},
        {},
        id="legacy-empty-fallback",
    ),
    pytest.param(
        {**UPLINKS, "PRIMARY_CHECK_INTERVAL_IN_SECONDS": "5", "BACKUP_CHECK_INTERVAL_IN_SECONDS": "45"},
        {"active_interval": 5.0, "standby_interval": 45.0},
        id="legacy-intervals",
    ),
    pytest.param(
        {**UPLINKS, "PRIMARY_CHECK_INTERVAL_IN_SECONDS": "5", "NMFAILOVER_ACTIVE_INTERVAL": "4"},
        {"active_interval": 4.0},
        id="prefixed-interval-wins",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_SUSPECT_INTERVAL": "0.1"},
        {"suspect_interval": 0.1},
        id="suspect-below-timeout",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_SUSPECT_INTERVAL": "1"}, {"suspect_interval": 1.0}, id="suspect-equals-active"
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_QUORUM": str(N_TARGETS)}, {"probe_quorum": N_TARGETS}, id="quorum-all"
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_METRIC_BASE": str(MAX_METRIC - 100)},
        {"metric_base": MAX_METRIC - 100},
        id="metric-at-limit",
    ),
    *(
        pytest.param(
            {**UPLINKS, "NMFAILOVER_MANAGE_AUTOCONNECT_PRIORITY": raw},
            {"manage_autoconnect_priority": expected},
            id=f"bool-{raw}",
        )
        for raw, expected in [("1", True), ("0", False), ("true", True), ("FALSE", False), ("Yes", True)]
    ),
    pytest.param({**UPLINKS, "NMFAILOVER_LOG_LEVEL": " Warning "}, {"log_level": "WARNING"}, id="level-case"),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_ON_DEMAND": "wwan0", "NMFAILOVER_ON_DEMAND_LINGER": "0"},
        {"on_demand": ("wwan0",), "on_demand_linger": 0.0},
        id="on-demand",
    ),
    pytest.param({**UPLINKS, "PATH": "/usr/bin", "NMFAILOVERX": "1"}, {}, id="unrelated-variables"),
    # No uplinks named: found at run time; room for the metrics and tables of AUTO_MAX_UPLINKS is checked.
    pytest.param({}, {"uplinks": ()}, id="uplinks-unset-auto"),
    pytest.param({"NMFAILOVER_UPLINKS": " Auto "}, {"uplinks": ()}, id="uplinks-auto"),
    pytest.param({"NMFAILOVER_UPLINKS": ""}, {"uplinks": ()}, id="uplinks-empty-auto"),
]


@pytest.mark.parametrize(("environ", "changed"), VALID)
def test_valid(environ: dict[str, str], changed: dict[str, Any]) -> None:
    settings = load_settings(environ)
    assert {name: getattr(settings, name) for name in DEFAULTS} == {**DEFAULTS, **changed}


INVALID: list[Any] = [
    pytest.param(
        {"NMFAILOVER_UPLINKS": "eth0"},
        "NMFAILOVER_UPLINKS",
        "needs at least 2 profiles, or auto; got 1 ('eth0')",
        id="uplinks-one",
    ),
    pytest.param(
        {"NMFAILOVER_UPLINKS": "eth0, wwan0,eth0"},
        "NMFAILOVER_UPLINKS",
        "'eth0' is listed twice",
        id="uplinks-dup",
    ),
    pytest.param(
        {"NMFAILOVER_UPLINKS": "a,,b"}, "NMFAILOVER_UPLINKS", "empty item: 'a,,b'", id="uplinks-empty-item"
    ),
    pytest.param(
        {"NMFAILOVER_METRIC_BASE": str(MAX_METRIC - 600)},
        "NMFAILOVER_METRIC_BASE",
        "leaves no room for 8 uplinks",
        id="auto-uplinks-metric-room",
    ),
    pytest.param(
        {"NMFAILOVER_UPLINKS": "a,b,"}, "NMFAILOVER_UPLINKS", "empty item", id="uplinks-trailing-comma"
    ),
    pytest.param(
        {**UPLINKS, "PRIMARY_CONNECTION": "eth0"},
        "NMFAILOVER_UPLINKS",
        "PRIMARY_CONNECTION, not both",
        id="both-uplink-forms",
    ),
    pytest.param({"PRIMARY_CONNECTION": "eth0"}, "BACKUP_CONNECTION", "not set", id="legacy-no-backup"),
    pytest.param(
        {"PRIMARY_CONNECTION": " ", "BACKUP_CONNECTION": "wwan0"},
        "PRIMARY_CONNECTION",
        "empty",
        id="legacy-empty",
    ),
    pytest.param(
        {"PRIMARY_CONNECTION": "eth0", "BACKUP_CONNECTION": "wwan0", "FALLBACK_CONNECTION": "eth0"},
        "FALLBACK_CONNECTION",
        "'eth0' is already PRIMARY_CONNECTION",
        id="legacy-dup",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_URLS": "https://a.example/,ftp://x"},
        "NMFAILOVER_PROBE_URLS",
        "ftp://x",
        id="url-scheme",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_URLS": "https://a.example/ 999"},
        "NMFAILOVER_PROBE_URLS",
        "999",
        id="url-bad-status",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_URLS": ""}, "NMFAILOVER_PROBE_URLS", "is empty", id="urls-empty"
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_URLS": "https://a.example/,,https://b.example/"},
        "NMFAILOVER_PROBE_URLS",
        "empty item",
        id="urls-empty-item",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_ACTIVE_INTERVAL": "abc"},
        "NMFAILOVER_ACTIVE_INTERVAL",
        "must be a number greater than 0; got 'abc'",
        id="interval-not-number",
    ),
    pytest.param(
        {**UPLINKS, "PRIMARY_CHECK_INTERVAL_IN_SECONDS": "abc"},
        "PRIMARY_CHECK_INTERVAL_IN_SECONDS",
        "must be a number greater than 0",
        id="legacy-interval-not-number",
    ),
    *(
        pytest.param(
            {**UPLINKS, variable: raw},
            variable,
            f"must be a number greater than 0; got '{raw}'",
            id=f"{name}-{raw}",
        )
        for variable, name in [
            ("NMFAILOVER_PROBE_TIMEOUT", "timeout"),
            ("NMFAILOVER_ACTIVE_INTERVAL", "active"),
            ("NMFAILOVER_STANDBY_INTERVAL", "standby"),
            ("NMFAILOVER_SUSPECT_INTERVAL", "suspect"),
        ]
        for raw in ["0", "-1", "nan", "inf", ""]
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_TIMEOUT": "3.0"},
        "NMFAILOVER_PROBE_TIMEOUT",
        "must not be longer than NMFAILOVER_ACTIVE_INTERVAL (1.0 s); got 3.0",
        id="timeout-over-active",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_ACTIVE_INTERVAL": "40", "NMFAILOVER_PROBE_TIMEOUT": "31"},
        "NMFAILOVER_PROBE_TIMEOUT",
        "must not be longer than NMFAILOVER_STANDBY_INTERVAL (30.0 s); got 31.0",
        id="timeout-over-standby",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_SUSPECT_INTERVAL": "2.5"},
        "NMFAILOVER_SUSPECT_INTERVAL",
        "must not be longer than NMFAILOVER_ACTIVE_INTERVAL (1.0 s); got 2.5",
        id="suspect-over-active",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROOF_INTERVAL": "0.5"},
        "NMFAILOVER_PROOF_INTERVAL",
        "must not be shorter than NMFAILOVER_ACTIVE_INTERVAL (1.0 s); got 0.5",
        id="proof-under-active",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_STANDBY_PROOF_INTERVAL": "10"},
        "NMFAILOVER_STANDBY_PROOF_INTERVAL",
        "must not be shorter than NMFAILOVER_STANDBY_INTERVAL (30.0 s); got 10.0",
        id="standby-proof-under-standby",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_QUORUM": "0"},
        "NMFAILOVER_PROBE_QUORUM",
        "must be a whole number of 1 or more; got '0'",
        id="quorum-0",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_QUORUM": str(N_TARGETS + 1)},
        "NMFAILOVER_PROBE_QUORUM",
        f"must not exceed the number of probe targets ({N_TARGETS}); got {N_TARGETS + 1}",
        id="quorum-over-targets",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_URLS": "https://a.example/", "NMFAILOVER_PROBE_QUORUM": "2"},
        "NMFAILOVER_PROBE_QUORUM",
        "number of probe targets (1); got 2",
        id="quorum-over-given-targets",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_QUORUM": "1.5"},
        "NMFAILOVER_PROBE_QUORUM",
        "got '1.5'",
        id="quorum-fraction",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_FAIL_COUNT": "0"}, "NMFAILOVER_FAIL_COUNT", "1 or more", id="fail-0"
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_RISE_COUNT": "0"}, "NMFAILOVER_RISE_COUNT", "1 or more", id="rise-0"
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_RISE_COUNT": "many"},
        "NMFAILOVER_RISE_COUNT",
        "got 'many'",
        id="rise-not-number",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_FAILBACK_HOLD_DOWN": "-1"},
        "NMFAILOVER_FAILBACK_HOLD_DOWN",
        "must be a number of 0 or more; got '-1'",
        id="hold-down-negative",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_METRIC_BASE": "-1"},
        "NMFAILOVER_METRIC_BASE",
        f"must be a whole number from 0 to {MAX_METRIC}; got '-1'",
        id="metric-base-negative",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_METRIC_BASE": str(MAX_METRIC + 1)},
        "NMFAILOVER_METRIC_BASE",
        f"from 0 to {MAX_METRIC}",
        id="metric-base-too-big",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_METRIC_BASE": str(MAX_METRIC - 99)},
        "NMFAILOVER_METRIC_BASE",
        f"the last would get {MAX_METRIC + 1}, above {MAX_METRIC}",
        id="metric-overflow",
    ),
    pytest.param(
        {"NMFAILOVER_UPLINKS": "a,b,c", "NMFAILOVER_METRIC_STEP": str(MAX_METRIC // 2 + 1)},
        "NMFAILOVER_METRIC_BASE",
        "leaves no room for 3 uplinks",
        id="metric-step-overflow",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_METRIC_STEP": "0"}, "NMFAILOVER_METRIC_STEP", "1 or more", id="step-0"
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_LOG_LEVEL": "loud"},
        "NMFAILOVER_LOG_LEVEL",
        "must be one of TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL; got 'loud'",
        id="bad-level",
    ),
    *(
        pytest.param(
            {**UPLINKS, "NMFAILOVER_MANAGE_AUTOCONNECT_PRIORITY": raw},
            "NMFAILOVER_MANAGE_AUTOCONNECT_PRIORITY",
            f"must be one of 1, 0, true, false, yes, no; got '{raw}'",
            id=f"bad-bool-{raw or 'empty'}",
        )
        for raw in ["on", "2", ""]
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_FOO": "1"},
        "NMFAILOVER_FOO",
        "unknown variable; known: NMFAILOVER_ACTIVE_INTERVAL, ",
        id="unknown",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_URL": "https://a.example/"},
        "NMFAILOVER_PROBE_URL",
        "NMFAILOVER_PROBE_URLS",
        id="typo",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_ENV_FILE": "/nonexistent/nmfailover.env"},
        "NMFAILOVER_ENV_FILE",
        "no such file: /nonexistent/nmfailover.env",
        id="env-file-missing",
    ),
]


@pytest.mark.parametrize(("environ", "variable", "fragment"), INVALID)
def test_invalid(environ: dict[str, str], variable: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    error = caught.value
    assert error.variable == variable
    assert str(error) == f"{variable}: {error.problem}"
    assert fragment in error.problem
    assert "\n" not in str(error)
    assert error.__context__ is None or error.__suppress_context__  # no pydantic traceback under ours


ENV_FILE_CASES: list[Any] = [
    pytest.param(
        "NMFAILOVER_UPLINKS=eth0,wwan0\nNMFAILOVER_FAIL_COUNT=5\n", {}, {"fail_count": 5}, id="file-only"
    ),
    pytest.param(
        "# comment\n\nNMFAILOVER_UPLINKS='eth0, wwan0'\nNMFAILOVER_FAIL_COUNT=5\n",
        {"NMFAILOVER_FAIL_COUNT": "7"},
        {"fail_count": 7},
        id="environment-wins",
    ),
    pytest.param('PRIMARY_CONNECTION=eth0\nBACKUP_CONNECTION="wwan0"\n', {}, {}, id="legacy-in-file"),
]


@pytest.mark.parametrize(("text", "environ", "changed"), ENV_FILE_CASES)
@pytest.mark.parametrize("where", ["explicit", "default"])
def test_env_file(
    tmp_path: Path,
    no_default_env_file: Path,
    where: str,
    text: str,
    environ: dict[str, str],
    changed: dict[str, Any],
) -> None:
    path = tmp_path / "explicit.env" if where == "explicit" else no_default_env_file
    path.write_text(text)
    if where == "explicit":
        environ = {**environ, "NMFAILOVER_ENV_FILE": str(path)}
    settings = load_settings(environ)
    assert {name: getattr(settings, name) for name in DEFAULTS} == {**DEFAULTS, **changed}


ENV_FILE_ERRORS: list[Any] = [
    pytest.param(
        "NMFAILOVER_UPLINKS=eth0,wwan0\nNMFAILOVER_FOOO=1\n", "NMFAILOVER_FOOO", "unknown", id="unknown"
    ),
    pytest.param("NMFAILOVER_UPLINKS=eth0\n", "NMFAILOVER_UPLINKS", "at least 2", id="bad-value"),
    pytest.param(
        "NMFAILOVER_UPLINKS=eth0,wwan0\n\nNMFAILOVER_FAIL_COUNT 3\n",
        "NMFAILOVER_ENV_FILE",
        "line 3: expected NAME=value, got 'NMFAILOVER_FAIL_COUNT 3'",
        id="malformed-line",
    ),
    pytest.param(
        "NMFAILOVER_UPLINKS=eth0,wwan0\nNMFAILOVER_FAIL_COUNT\n",
        "NMFAILOVER_ENV_FILE",
        "line 2: expected NAME=value",
        id="no-equals",
    ),
    pytest.param(b"NMFAILOVER_UPLINKS=\xff\n", "NMFAILOVER_ENV_FILE", "not UTF-8", id="not-utf8"),
    pytest.param(
        b"NMFAILOVER_UPLINKS=a,b\n# caf\xe9\n",
        "NMFAILOVER_ENV_FILE",
        "line 2: not UTF-8 text (systemd would skip the whole file)",
        id="not-utf8-line",
    ),
    pytest.param(
        "export NMFAILOVER_UPLINKS=a,b\n",
        "NMFAILOVER_ENV_FILE",
        "line 1: 'export' is shell syntax systemd does not understand; write NMFAILOVER_UPLINKS=value",
        id="export",
    ),
]


@pytest.mark.parametrize(("content", "variable", "fragment"), ENV_FILE_ERRORS)
def test_env_file_errors(
    no_default_env_file: Path, content: str | bytes, variable: str, fragment: str
) -> None:
    if isinstance(content, bytes):
        no_default_env_file.write_bytes(content)
    else:
        no_default_env_file.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings({})
    assert caught.value.variable == variable
    assert fragment in caught.value.problem
    assert "\n" not in str(caught.value)


def test_env_file_no_interpolation(no_default_env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ${LEVEL} must stay literal: filling it in from os.environ would bypass the mapping given.
    monkeypatch.setenv("LEVEL", "DEBUG")
    no_default_env_file.write_text("NMFAILOVER_UPLINKS=eth0,wwan0\nNMFAILOVER_LOG_LEVEL=${LEVEL}\n")
    with pytest.raises(ConfigError, match=r"^NMFAILOVER_LOG_LEVEL: .*got '\$\{LEVEL\}'$"):
        load_settings({"LEVEL": "DEBUG"})


def test_env_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^NMFAILOVER_ENV_FILE: cannot read .*: Is a directory$"):
        load_settings({**UPLINKS, "NMFAILOVER_ENV_FILE": str(tmp_path)})


def test_empty_env_file_variable_skips_default(no_default_env_file: Path) -> None:
    no_default_env_file.write_text("NMFAILOVER_FAIL_COUNT=oops\n")
    assert load_settings({**UPLINKS, "NMFAILOVER_ENV_FILE": ""}).fail_count == 2


def test_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRIMARY_CONNECTION", "BACKUP_CONNECTION", "FALLBACK_CONNECTION", "NMFAILOVER_ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NMFAILOVER_UPLINKS", "eth0,wwan0")
    monkeypatch.setenv("NMFAILOVER_RISE_COUNT", "9")
    assert load_settings().rise_count == 9
    # An explicit mapping is the whole environment: nothing from the process may leak in.
    assert load_settings({"NMFAILOVER_UPLINKS": "a,b"}).rise_count == 3


def test_frozen() -> None:
    settings = load_settings(UPLINKS)
    with pytest.raises(ValueError, match="frozen"):
        settings.fail_count = 9


def test_settings_does_not_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NMFAILOVER_FAIL_COUNT", "9")
    assert Settings(NMFAILOVER_UPLINKS="a,b").fail_count == 2  # type: ignore[call-arg]


def test_config_error_is_the_package_one() -> None:
    assert config.ConfigError is errors.ConfigError
    assert issubclass(ConfigError, errors.NmfailoverError)


# -- the env-file grammar: systemd's EnvironmentFile= (see the comment above parse_env_file) ------------

# text -> what systemd's EnvironmentFile= reads from it, and so must parse_env_file.
ENV_GRAMMAR: list[Any] = [
    pytest.param("", {}, id="empty"),
    pytest.param("\n  \n\t\n", {}, id="blank-lines"),
    pytest.param("A=1", {"A": "1"}, id="no-final-newline"),
    pytest.param("A=1\nB=2\n", {"A": "1", "B": "2"}, id="two"),
    pytest.param("A=1\nA=2\n", {"A": "2"}, id="later-wins"),
    pytest.param("_a1=x\nNMFAILOVER_UPLINKS=a,b\n", {"_a1": "x", "NMFAILOVER_UPLINKS": "a,b"}, id="names"),
    pytest.param("A=\nB=", {"A": "", "B": ""}, id="empty-values"),
    pytest.param("# A=1\n; B=2\n   # C=3\n\t;D=4\n", {}, id="comments"),
    pytest.param("#\n;\nA=1\n", {"A": "1"}, id="bare-comment-marks"),
    pytest.param("# a \\ b\nA=1\n", {"A": "1"}, id="backslash-inside-comment"),
    pytest.param("  A = 1 \n\tB\t=\t2\t\n", {"A": "1", "B": "2"}, id="blanks-around"),
    pytest.param("A=a  b\tc\n", {"A": "a  b\tc"}, id="inner-blanks-kept"),
    pytest.param("A=1 # not a comment\n", {"A": "1 # not a comment"}, id="hash-in-value"),
    pytest.param("A=a;b\n", {"A": "a;b"}, id="semicolon-in-value"),
    pytest.param("A=b=c\n", {"A": "b=c"}, id="equals-in-value"),
    pytest.param("A=${B} $B `b`\n", {"A": "${B} $B `b`"}, id="no-expansion"),
    pytest.param("A=it's\n", {"A": "it's"}, id="later-quote-kept"),
    pytest.param('A=a "b c"\n', {"A": 'a "b c"'}, id="later-quotes-kept"),
    pytest.param("A='a  b'\n", {"A": "a  b"}, id="single"),
    pytest.param("A='a\\b $B \"#'\n", {"A": 'a\\b $B "#'}, id="single-verbatim"),
    pytest.param('A="a  b"\n', {"A": "a  b"}, id="double"),
    pytest.param('A="\\"\\\\\\`\\$"\n', {"A": '"\\`$'}, id="double-escapes"),
    pytest.param('A="a\\nb\\\'"\n', {"A": "a\\nb\\'"}, id="double-other-backslash-kept"),
    pytest.param('A="it\'s"\nB=\'say "hi"\'\n', {"A": "it's", "B": 'say "hi"'}, id="other-quote-inside"),
    pytest.param("A='' \nB=\"\"\n", {"A": "", "B": ""}, id="empty-quotes"),
    pytest.param('A=  " a "  \n', {"A": " a "}, id="blanks-outside-quotes"),
    pytest.param('A="a b"c\n', {"A": "a bc"}, id="quote-then-text"),
    pytest.param("A='a'\"b\"\n", {"A": "ab"}, id="quote-then-quote"),
    pytest.param("A='a' 'b' c\n", {"A": "abc"}, id="blanks-after-quote-dropped"),
    pytest.param("A=a\\ b\\\\c\\#\n", {"A": "a b\\c#"}, id="unquoted-escapes"),
    pytest.param("A=\\#x\n", {"A": "#x"}, id="leading-escape"),
    pytest.param("A=a\\ \n", {"A": "a "}, id="escaped-trailing-blank"),
    pytest.param("A=a,\\\n  b\nB=2\n", {"A": "a,  b", "B": "2"}, id="continuation"),
    pytest.param("A=a \\\n\n", {"A": "a "}, id="blank-before-continuation-kept"),
    pytest.param("A=\\\nb\n", {"A": "b"}, id="continuation-first"),
    pytest.param('A="a\\\nb"\n', {"A": "ab"}, id="double-continuation"),
    pytest.param("A=a\\", {"A": "a"}, id="backslash-at-end"),
    pytest.param("A=1\r\nB='x'\r\n# c\r\n", {"A": "1", "B": "x"}, id="crlf"),
    pytest.param("# a\\\r\nA=1\r\n", {"A": "1"}, id="crlf-comment-backslash"),
    pytest.param("A=é ü\n", {"A": "é ü"}, id="utf8"),
]


@pytest.mark.parametrize(("text", "expected"), ENV_GRAMMAR)
def test_env_grammar(text: str, expected: dict[str, str]) -> None:
    assert parse_env_file(text) == expected


@pytest.mark.parametrize(("text", "expected"), ENV_GRAMMAR)
def test_env_grammar_read_from_a_file(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    # Bytes in, so that no newline translation can hide a \r from the parser.
    path = tmp_path / "grammar.env"
    path.write_bytes(text.encode())
    assert config._read_env_file({"NMFAILOVER_ENV_FILE": str(path)}) == expected


NOT_A_NAME = "is not a variable name (letters, digits and _, not starting with a digit)"
UNCLOSED_SINGLE = "single quote (') not closed on its line"
UNCLOSED_DOUBLE = 'double quote (") not closed on its line'
LONE_CR = "has a carriage return not followed by a line feed, where systemd ends the line"

# text -> the line and the whole problem, and what systemd 252 reads from the text instead (None: nothing,
# it skips the whole file), which is why it is refused.
ENV_GRAMMAR_ERRORS: list[Any] = [
    pytest.param("A=1\nB\n", 2, "expected NAME=value, got 'B'", {"A": "1"}, id="no-equals"),
    pytest.param("A=1\n  B  ", 2, "expected NAME=value, got 'B'", {"A": "1"}, id="no-equals-at-end"),
    pytest.param(
        "NMFAILOVER_FAIL_COUNT 3\n",
        1,
        "expected NAME=value, got 'NMFAILOVER_FAIL_COUNT 3'",
        {},
        id="blank-for-equals",
    ),
    pytest.param("A: 1\n", 1, "expected NAME=value, got 'A: 1'", {}, id="colon-for-equals"),
    pytest.param("=1\n", 1, "expected NAME=value, got '=1'", {}, id="no-name"),
    pytest.param(
        "export A=1\n",
        1,
        "'export' is shell syntax systemd does not understand; write A=value",
        {"export A": "1"},
        id="export",
    ),
    pytest.param("A B=1\n", 1, f"'A B' {NOT_A_NAME}", {"A B": "1"}, id="blank-in-name"),
    pytest.param("1A=1\n", 1, f"'1A' {NOT_A_NAME}", {"1A": "1"}, id="digit-first"),
    pytest.param("A-B=1\n", 1, f"'A-B' {NOT_A_NAME}", {"A-B": "1"}, id="dash-in-name"),
    pytest.param("É=1\n", 1, f"'É' {NOT_A_NAME}", {"É": "1"}, id="non-ascii-name"),
    pytest.param("A$=1\n", 1, f"'A$' {NOT_A_NAME}", {"A$": "1"}, id="dollar-in-name"),
    pytest.param(
        "\ufeffA=1\n",
        1,
        "the file starts with a byte order mark, which systemd does not skip; save it without one",
        {"\ufeffA": "1"},
        id="byte-order-mark",
    ),
    # Shown escaped: the character is invisible.
    pytest.param(
        "A=1\n\ufeffB=1\n", 2, f"'\\ufeffB' {NOT_A_NAME}", {"A": "1", "\ufeffB": "1"}, id="inner-bom"
    ),
    pytest.param("A='x\nB=2\n", 1, UNCLOSED_SINGLE, {"A": "x\nB=2\n"}, id="single-unclosed"),
    pytest.param("A='x", 1, UNCLOSED_SINGLE, {"A": "x"}, id="single-open-at-end"),
    pytest.param('A="x\nB=2\n', 1, UNCLOSED_DOUBLE, {"A": "x\nB=2\n"}, id="double-unclosed"),
    pytest.param(
        'A="x\\\ny\nB=2\n',
        2,
        f"{UNCLOSED_DOUBLE} (opened on line 1)",
        {"A": "xy\nB=2\n"},
        id="double-unclosed-after-continuation",
    ),
    pytest.param('A="x\\', 1, UNCLOSED_DOUBLE, {"A": "x"}, id="double-escape-at-end"),
    pytest.param("A='x\r\n", 1, UNCLOSED_SINGLE, {"A": "x\r\n"}, id="single-unclosed-crlf"),
    pytest.param(
        "# see C:\\\nA=1\n",
        1,
        "comment ends in a backslash, so systemd would take the next line as comment too",
        {},
        id="comment-backslash",
    ),
    pytest.param(
        "A=1\x00\nB=2\n", 1, "has a NUL character (systemd would skip the whole file)", None, id="nul"
    ),
    pytest.param("A=1\rB=2\n", 1, LONE_CR, {"A": "1", "B": "2"}, id="lone-cr"),
    pytest.param("A=1\nB='1\r'\n", 2, LONE_CR, {"A": "1", "B": "1\r"}, id="lone-cr-quoted"),
    # Line numbers count every line, continued ones too (systemd's own count skips those).
    pytest.param("# c\n\nA=1\n\nbad\n", 5, "expected NAME=value, got 'bad'", {"A": "1"}, id="after-blanks"),
    pytest.param(
        "A=a\\\nb\nbad\n", 3, "expected NAME=value, got 'bad'", {"A": "ab"}, id="after-continuation"
    ),
    pytest.param('A="a\\\nb"\nB C=1\n', 3, f"'B C' {NOT_A_NAME}", {"A": "ab", "B C": "1"}, id="name-line"),
    # In a CRLF file, \ before the line end escapes the \r; the \n then ends the value.
    pytest.param("A=a\\\r\nb\r\n", 2, "expected NAME=value, got 'b'", {"A": "a"}, id="crlf-continuation"),
]


@pytest.mark.parametrize(("text", "line", "problem", "systemd_reads"), ENV_GRAMMAR_ERRORS)
def test_env_grammar_errors(text: str, line: int, problem: str, systemd_reads: object) -> None:
    with pytest.raises(EnvFileError) as caught:
        parse_env_file(text)
    assert (caught.value.line, caught.value.problem) == (line, problem)
    assert str(caught.value) == f"line {line}: {problem}"
    assert "\n" not in caught.value.problem and "\r" not in caught.value.problem


@pytest.mark.parametrize(("text", "line", "problem", "systemd_reads"), ENV_GRAMMAR_ERRORS)
def test_env_grammar_errors_name_variable_path_and_line(
    tmp_path: Path, text: str, line: int, problem: str, systemd_reads: object
) -> None:
    path = tmp_path / "bad.env"
    path.write_bytes(text.encode())
    with pytest.raises(ConfigError) as caught:
        load_settings({**UPLINKS, "NMFAILOVER_ENV_FILE": str(path)})
    assert caught.value.variable == "NMFAILOVER_ENV_FILE"
    assert str(caught.value) == f"NMFAILOVER_ENV_FILE: {path} line {line}: {problem}"
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
    assert caught.value.__suppress_context__


# -- the tables against systemd's own parser -----------------------------------------------------------

_STRV = ctypes.POINTER(ctypes.c_char_p)


@functools.cache
def _systemd_library() -> tuple[int, ctypes.CDLL] | None:
    """systemd's shared library, newest first, with its version; None without one.

    Its load_env_file() is not a public API, but has had the same signature from systemd 240 to today;
    the version check keeps an older one from being called with the wrong arguments."""
    found = glob.glob("/usr/lib*/systemd/libsystemd-shared-*.so") + glob.glob(
        "/usr/lib/*/systemd/libsystemd-shared-*.so"
    )
    candidates = []
    for name in found:
        version = re.search(r"libsystemd-shared-(\d+)\.so$", name)
        if version is not None and int(version[1]) >= 240:
            candidates.append((int(version[1]), name))
    for number, name in sorted(candidates, reverse=True):
        try:
            library = ctypes.CDLL(name)
            library.load_env_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(_STRV)]
            library.load_env_file.restype = ctypes.c_int
            library.strv_free.argtypes = [_STRV]
            library.strv_free.restype = ctypes.c_void_p
        except (OSError, AttributeError):
            continue
        return number, library
    return None


def _systemd_reads(tmp_path: Path, text: str, version: int | None = None) -> dict[str, str] | None:
    """What systemd's EnvironmentFile= parser returns for `text`; None where it refuses the file."""
    found = _systemd_library()
    if found is None:
        pytest.skip("systemd's libsystemd-shared is not installed")
    if version is not None and found[0] != version:
        pytest.skip(f"systemd {found[0]} here, not {version}")
    library = found[1]
    path = tmp_path / "systemd.env"
    path.write_bytes(text.encode())
    entries = _STRV()
    if library.load_env_file(None, bytes(path), ctypes.byref(entries)) < 0:
        return None
    if not entries:  # no assignment at all comes back as NULL
        return {}
    try:
        read: dict[str, str] = {}
        for index in itertools.count():
            entry: bytes | None = entries[index]
            if entry is None:
                return read
            name, _, value = entry.decode().partition("=")
            read[name] = value
        raise AssertionError("unreachable")
    finally:
        library.strv_free(entries)


@pytest.mark.parametrize(("text", "expected"), ENV_GRAMMAR)
def test_env_grammar_is_systemds(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    assert _systemd_reads(tmp_path, text) == expected


@pytest.mark.parametrize(("text", "line", "problem", "systemd_reads"), ENV_GRAMMAR_ERRORS)
def test_env_grammar_errors_are_what_systemd_misreads(
    tmp_path: Path, text: str, line: int, problem: str, systemd_reads: object
) -> None:
    # 252 is Debian 12's, which the package is for; 254 changed the comment-backslash case.
    assert _systemd_reads(tmp_path, text, version=252) == systemd_reads


def test_env_grammar_agrees_with_systemd_on_random_files(tmp_path: Path) -> None:
    """Whatever parse_env_file accepts, systemd reads the same way: random lines of tricky pieces."""
    pieces = [" ", "\t", "'", '"', "\\", "#", ";", "$", "`", "x", "y z", "é", "=", "\\\n", "\n", "\r\n"]
    rng = random.Random(252)
    accepted = 0
    for _ in range(3000):
        lines = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.15:
                lines.append(rng.choice(["", "  ", "# c", " ; c", "#\\", "# a\\b", "A", "export A=1"]))
            else:
                value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
                indent, name, blank = (
                    rng.choice(["", " ", "\t"]),
                    rng.choice(["A", "B", "_x1"]),
                    rng.choice(["", " "]),
                )
                lines.append(f"{indent}{name}{blank}={value}")
        text = rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n", "\r\n"])
        try:
            mine = parse_env_file(text)
        except EnvFileError:
            continue
        accepted += 1
        assert _systemd_reads(tmp_path, text) == mine, repr(text)
    assert accepted > 1000  # the generator must keep producing files worth comparing
