"""Settings at the front door: every command checks every flag and HEADWATER_* variable before
it does anything, and says what is wrong in one line each, with exit status 2."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from headwater.config import Settings, SettingsError
from tests.conftest import HEADWATER, ROOT


def headwater(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command in an environment of no HEADWATER_* variables but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    return subprocess.run([*HEADWATER, *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60)


def test_bad_variables_are_all_reported_in_one_line_each(tmp_path: Path) -> None:
    env = {
        "HEADWATER_MAX_BODY_BYTES": "5MB",
        "HEADWATER_WEBHOOK_RETRY_SCHEDULE": "bad",
        "HEADWATER_SYNC_TIMEOUT": "-1",
        "HEADWATER_WEBHOOK_WORKER": "maybe",
        "HEADWATER_SEGMENT_SKEW_SECONDS": "5m",
    }
    result = headwater("serve", "--data-dir", str(tmp_path / "data"), env=env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "headwater: HEADWATER_MAX_BODY_BYTES='5MB' is not valid: expected a whole number of bytes (1 or more), "
        "e.g. 5242880",
        "headwater: HEADWATER_SYNC_TIMEOUT='-1' is not valid: expected a number of seconds (more than 0), e.g. 10",
        "headwater: HEADWATER_SEGMENT_SKEW_SECONDS='5m' is not valid: expected a number of seconds (0 or more), "
        "e.g. 0.5, or nothing",
        "headwater: HEADWATER_WEBHOOK_RETRY_SCHEDULE='bad' is not valid: expected comma-separated seconds, "
        "e.g. 0,5,300",
        "headwater: HEADWATER_WEBHOOK_WORKER='maybe' is not valid: expected 1 or 0 (or true/false, yes/no, on/off)",
    ]
    # Refused before anything happened: no data dir, no bootstrap key.
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--log-level", "verbose"], {}, "--log-level='verbose' is not valid: expected one of critical, error, "
         "warning, info, debug, trace"),
        ([], {"HEADWATER_LOG_LEVEL": "verbose"}, "HEADWATER_LOG_LEVEL='verbose' is not valid: expected one of "
         "critical, error, warning, info, debug, trace"),
        (["--port", "80a"], {}, "--port='80a' is not valid: expected a port number from 1 to 65535, e.g. 8000"),
        ([], {"HEADWATER_PORT": "70000"}, "HEADWATER_PORT='70000' is not valid: expected a port number from 1 to "
         "65535, e.g. 8000"),
        (["--host", ""], {}, "--host='' is not valid: expected a non-empty value"),
        (["--header-timeout", "0"], {}, "--header-timeout='0' is not valid: expected a number of seconds (more "
         "than 0), e.g. 10"),
        ([], {"HEADWATER_BODY_TIMEOUT": "soon"}, "HEADWATER_BODY_TIMEOUT='soon' is not valid: expected a number of "
         "seconds (more than 0), e.g. 10"),
        ([], {"HEADWATER_KEEP_ALIVE_TIMEOUT": "-1"}, "HEADWATER_KEEP_ALIVE_TIMEOUT='-1' is not valid: expected a "
         "number of seconds (more than 0), e.g. 10"),
        (["--log-format", "xml"], {}, "--log-format='xml' is not valid: expected one of text, json"),
        # Read by the flag and by the settings alike, and said once.
        ([], {"HEADWATER_LOG_FORMAT": "xml"}, "HEADWATER_LOG_FORMAT='xml' is not valid: expected one of text, json"),
        ([], {"HEADWATER_MAX_COMPRESSED_BODY_BYTES": "1MB"}, "HEADWATER_MAX_COMPRESSED_BODY_BYTES='1MB' is not "
         "valid: expected a whole number of bytes (1 or more), e.g. 1048576, or nothing"),
    ],
)  # fmt: skip
def test_a_bad_flag_names_the_flag_or_its_variable(
    tmp_path: Path, args: list[str], env: dict[str, str], line: str
) -> None:
    result = headwater("serve", "--data-dir", str(tmp_path / "data"), *args, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"headwater: {line}\n")


def test_a_bad_flag_and_bad_variables_are_reported_together(tmp_path: Path) -> None:
    result = headwater("serve", "--port", "x", "--data-dir", str(tmp_path), env={"HEADWATER_MAX_JSON_DEPTH": "0"})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "headwater: --port='x' is not valid: expected a port number from 1 to 65535, e.g. 8000",
        "headwater: HEADWATER_MAX_JSON_DEPTH='0' is not valid: expected a whole number of levels (1 or more), e.g. 64",
    ]


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["keys", "create", "--role", "admin"], {"HEADWATER_QUEUE_MAX_EVENTS": "lots"},
         "HEADWATER_QUEUE_MAX_EVENTS='lots' is not valid: expected a whole number of events (1 or more), e.g. 200000"),
        (["keys", "create", "--role", "owner"], {},
         "--role='owner' is not valid: expected one of admin, editor, ingest, viewer"),
        (["keys", "create", "--role", "admin"], {"HEADWATER_MODE": "prod"},
         "HEADWATER_MODE='prod' is not valid: expected one of live, test"),
        (["events", "export"], {"HEADWATER_KEY_CACHE_SECONDS": "nan"},
         "HEADWATER_KEY_CACHE_SECONDS='nan' is not valid: expected a number of seconds (0 or more), e.g. 0.5"),
        # Options of click's own types say what click says, in the same one line.
        (["events", "import", "-"], {"HEADWATER_EVENTS_IMPORT_BATCH_SIZE": "0"},
         "HEADWATER_EVENTS_IMPORT_BATCH_SIZE is not valid: 0 is not in the range 1<=x<=10000"),
        (["replay", "--batch-size", "0"], {}, "--batch-size is not valid: 0 is not in the range 1<=x<=100000"),
    ],
)  # fmt: skip
def test_every_command_checks_its_settings_first(
    tmp_path: Path, args: list[str], env: dict[str, str], line: str
) -> None:
    result = headwater(*args, env={"HEADWATER_DATA_DIR": str(tmp_path / "data"), **env})
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"headwater: {line}\n")
    assert not (tmp_path / "data").exists()


def test_an_unknown_variable_is_a_warning_naming_the_closest_known_one(tmp_path: Path) -> None:
    env = {
        "HEADWATER_DATA_DIR": str(tmp_path / "data"),
        "HEADWATER_PROT": "9000",
        # The per-command names click reads count as known (HEADWATER_<COMMAND>_<OPTION>).
        "HEADWATER_EVENTS_TAIL_CONT": "3",
        "HEADWATER_KEYS_CREATE_NAME": "from the environment",
        "HEADWATER_ZZZZZZZZ": "1",
    }
    result = headwater("keys", "create", "--role", "viewer", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "headwater: warning: HEADWATER_EVENTS_TAIL_CONT is not a Headwater setting and is ignored "
        "(did you mean HEADWATER_EVENTS_TAIL_COUNT?)",
        "headwater: warning: HEADWATER_PROT is not a Headwater setting and is ignored (did you mean HEADWATER_PORT?)",
        "headwater: warning: HEADWATER_ZZZZZZZZ is not a Headwater setting and is ignored",
    ]
    assert "Created viewer key" in result.stdout


def test_settings_read_the_environment_and_report_every_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_MAX_BATCH_EVENTS", " 50 ")
    monkeypatch.setenv("HEADWATER_WEBHOOK_RETRY_SCHEDULE", "0, 2.5")
    monkeypatch.setenv("HEADWATER_ALLOW_PRIVATE_WEBHOOKS", "Yes")
    monkeypatch.setenv("HEADWATER_SEGMENT_SKEW_SECONDS", "")
    settings = Settings()
    assert (settings.max_batch_events, settings.webhook_retry_schedule) == (50, (0.0, 2.5))
    assert (settings.allow_private_webhooks, settings.webhook_worker) == (True, True)
    assert settings.segment_skew_seconds is None
    monkeypatch.setenv("HEADWATER_WEBHOOK_RETRY_SCHEDULE", "0,-5")
    monkeypatch.setenv("HEADWATER_MAX_BATCH_EVENTS", "1e3")
    with pytest.raises(SettingsError) as raised:
        Settings()
    assert raised.value.problems == [
        "HEADWATER_MAX_BATCH_EVENTS='1e3' is not valid: expected a whole number of events (1 or more), e.g. 1000",
        "HEADWATER_WEBHOOK_RETRY_SCHEDULE='0,-5' is not valid: expected comma-separated seconds, e.g. 0,5,300",
    ]


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(HEADWATER_[A-Z_]+)` \|", readme, re.MULTILINE))
    assert set(Settings.variables()) - documented == set()
