from pathlib import Path
from typing import Any

import pytest

from nmfailover import config
from nmfailover.config import MAX_METRIC, ConfigError, Settings, load_settings
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
    "active_interval": 2.0,
    "standby_interval": 30.0,
    "suspect_interval": 0.5,
    "fail_count": 2,
    "rise_count": 3,
    "failback_hold_down": 30.0,
    "metric_base": 100,
    "metric_step": 100,
    "manage_autoconnect_priority": True,
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
        {**UPLINKS, "NMFAILOVER_SUSPECT_INTERVAL": "2"}, {"suspect_interval": 2.0}, id="suspect-equals-active"
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
    pytest.param({**UPLINKS, "PATH": "/usr/bin", "NMFAILOVERX": "1"}, {}, id="unrelated-variables"),
]


@pytest.mark.parametrize(("environ", "changed"), VALID)
def test_valid(environ: dict[str, str], changed: dict[str, Any]) -> None:
    settings = load_settings(environ)
    assert {name: getattr(settings, name) for name in DEFAULTS} == {**DEFAULTS, **changed}


INVALID: list[Any] = [
    pytest.param({}, "NMFAILOVER_UPLINKS", "not set (give NMFAILOVER_UPLINKS=", id="uplinks-unset"),
    pytest.param({"NMFAILOVER_UPLINKS": " "}, "NMFAILOVER_UPLINKS", "is empty", id="uplinks-empty"),
    pytest.param(
        {"NMFAILOVER_UPLINKS": "eth0"},
        "NMFAILOVER_UPLINKS",
        "needs at least 2 profiles, got 1 ('eth0')",
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
        "must be shorter than NMFAILOVER_ACTIVE_INTERVAL (2.0 s); got 3.0",
        id="timeout-over-active",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_PROBE_TIMEOUT": "2"},
        "NMFAILOVER_PROBE_TIMEOUT",
        "must be shorter than NMFAILOVER_ACTIVE_INTERVAL (2.0 s); got 2.0",
        id="timeout-equals-active",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_ACTIVE_INTERVAL": "40", "NMFAILOVER_PROBE_TIMEOUT": "30"},
        "NMFAILOVER_PROBE_TIMEOUT",
        "must be shorter than NMFAILOVER_STANDBY_INTERVAL (30.0 s); got 30.0",
        id="timeout-equals-standby",
    ),
    pytest.param(
        {**UPLINKS, "NMFAILOVER_SUSPECT_INTERVAL": "2.5"},
        "NMFAILOVER_SUSPECT_INTERVAL",
        "must not be longer than NMFAILOVER_ACTIVE_INTERVAL (2.0 s); got 2.5",
        id="suspect-over-active",
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
        "# comment\n\nexport NMFAILOVER_UPLINKS='eth0, wwan0'\nNMFAILOVER_FAIL_COUNT=5\n",
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
