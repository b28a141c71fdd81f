"""Settings: defaults load, every kind of bad value stops start-up with one clear line, and the
documentation lists every variable with its default."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from core import config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_defaults_load_with_no_variables_set():
    settings = config.load({})
    assert settings.data_dir == "./var"
    assert settings.log_level == "info"
    assert settings.environment == "development"
    assert settings.release == ""
    assert settings.sentry_dsn is None
    assert settings.database_url is None and settings.database_owner_url is None
    assert settings.database_max_connections == 20
    assert settings.database_statement_timeout == 30.0
    assert settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.http_max_body == 1048576
    assert settings.wa_transport == "neonize"
    assert settings.shutdown_timeout == 20.0


def test_every_declared_default_is_itself_a_valid_value():
    for spec in config.SPECS:
        spec.parse(spec.default)  # raises if a default would not pass its own check


def test_good_values_are_parsed_to_their_types():
    settings = config.load(
        {
            "DATABASE_MAX_CONNECTIONS": "7",
            "SHUTDOWN_TIMEOUT": "2.5",
            "DATABASE_STATEMENT_TIMEOUT": "0",
            "PORT": "0",
            "LOG_LEVEL": " WARNING ",
            "WA_TRANSPORT": "simulator",
            "DATABASE_URL": "postgresql://app:pw@db:5432/wabot",
            "DATABASE_OWNER_URL": "postgres://owner@db/wabot",
            "SENTRY_DSN": "http://public@127.0.0.1:9/1",
        }
    )
    assert settings.database_max_connections == 7
    assert settings.shutdown_timeout == 2.5
    assert settings.database_statement_timeout == 0.0
    assert settings.port == 0
    assert settings.log_level == "warning"
    assert settings.wa_transport == "simulator"
    assert settings.database_url == "postgresql://app:pw@db:5432/wabot"
    assert settings.database_owner_url == "postgres://owner@db/wabot"
    assert settings.sentry_dsn == "http://public@127.0.0.1:9/1"


def test_variables_the_platform_does_not_declare_are_ignored():
    settings = config.load({"PATH": "/bin", "NOT_A_SETTING": "x"})
    assert settings == config.load({})


BAD_VALUES = [
    # non-numbers
    ("DATABASE_MAX_CONNECTIONS", "abc", "a whole number of at least 1"),
    ("DATABASE_MAX_CONNECTIONS", "2.5", "a whole number of at least 1"),
    ("DATABASE_MAX_CONNECTIONS", "", "a whole number of at least 1"),
    ("SHUTDOWN_TIMEOUT", "soon", "a number of seconds greater than 0"),
    ("SHUTDOWN_TIMEOUT", "nan", "a number of seconds greater than 0"),
    ("SHUTDOWN_TIMEOUT", "inf", "a number of seconds greater than 0"),
    ("DATABASE_STATEMENT_TIMEOUT", "inf", "a number of seconds of at least 0"),
    # negative, or zero where at least 1 is needed
    ("DATABASE_MAX_CONNECTIONS", "-3", "a whole number of at least 1"),
    ("DATABASE_MAX_CONNECTIONS", "0", "a whole number of at least 1"),
    ("SHUTDOWN_TIMEOUT", "-1", "a number of seconds greater than 0"),
    ("SHUTDOWN_TIMEOUT", "0", "a number of seconds greater than 0"),
    ("DATABASE_STATEMENT_TIMEOUT", "-0.5", "a number of seconds of at least 0"),
    ("HTTP_MAX_BODY", "-1", "a whole number of at least 1"),
    # ports
    ("PORT", "65536", "a port number from 0 to 65535"),
    ("PORT", "-1", "a port number from 0 to 65535"),
    ("PORT", "http", "a port number from 0 to 65535"),
    ("PORT", "80.5", "a port number from 0 to 65535"),
    # choices
    ("LOG_LEVEL", "verbose", "one of debug, info, warning, error"),
    ("WA_TRANSPORT", "whatsapp-web", "one of neonize, simulator"),
    # database URLs
    ("DATABASE_URL", "mysql://app@db/wabot", "a postgresql:// URL"),
    ("DATABASE_URL", "localhost:5432", "a postgresql:// URL"),
    ("DATABASE_OWNER_URL", "db.internal", "a postgresql:// URL"),
]


@pytest.mark.parametrize(("name", "value", "expected"), BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_a_bad_value_raises_a_one_line_error_naming_the_variable_the_value_and_what_is_expected(
    name, value, expected
):
    with pytest.raises(config.ConfigError) as caught:
        config.load({name: value})
    message = str(caught.value)
    assert "\n" not in message
    assert name in message
    assert repr(value) in message
    assert expected in message


def test_a_value_with_a_newline_is_still_reported_on_one_line():
    with pytest.raises(config.ConfigError) as caught:
        config.load({"PORT": "80\n81"})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PORT=")


def test_a_bad_database_url_is_reported_without_its_password():
    with pytest.raises(config.ConfigError) as caught:
        config.load({"DATABASE_URL": "mysql://app:s3cret-pw@db/wabot"})
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "DATABASE_URL" in message and "mysql://app:***@db/wabot" in message


def test_an_override_for_a_setting_that_does_not_exist_is_refused():
    with pytest.raises(config.ConfigError, match="no_such_setting"):
        config.load({}, no_such_setting=1)


def _clean_env(**values: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {spec.name for spec in config.SPECS}}
    env.update(values)
    return env


@pytest.mark.parametrize(
    ("name", "value"), [("DATABASE_MAX_CONNECTIONS", "abc"), ("PORT", "99999"), ("LOG_LEVEL", "loud")]
)
def test_run_py_with_a_bad_value_exits_non_zero_with_one_line_on_stderr_naming_the_variable(tmp_path, name, value):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py")],
        env=_clean_env(DATA_DIR=str(tmp_path), **{name: value}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0] and repr(value) in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "postgres").exists(), "nothing should start before the settings are valid"


# -- documentation ---------------------------------------------------------------------------------

_ROW = re.compile(r"^\|\s*`(?P<name>[A-Z][A-Z0-9_]*)`\s*\|\s*(?P<default>[^|]*?)\s*\|")


def _documented() -> dict[str, str]:
    path = ROOT / "docs" / "configuration.md"
    assert path.exists(), "docs/configuration.md is missing"
    rows = {}
    for line in path.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            assert match["name"] not in rows, f"{match['name']} is documented twice"
            rows[match["name"]] = match["default"]
    return rows


def test_the_configuration_docs_list_every_variable_with_its_default():
    documented = _documented()
    missing = [spec.name for spec in config.SPECS if spec.name not in documented]
    assert not missing, f"not in docs/configuration.md: {missing}"
    for spec in config.SPECS:
        shown = documented[spec.name]
        if spec.default == "":
            assert shown in ("(empty)", "``", '`""`'), f"{spec.name}: default shown as {shown!r}, expected (empty)"
        else:
            assert shown == f"`{spec.default}`", f"{spec.name}: default shown as {shown!r}, expected `{spec.default}`"


def test_the_configuration_docs_list_no_variable_the_code_does_not_read():
    declared = {spec.name for spec in config.SPECS}
    extra = sorted(set(_documented()) - declared)
    assert not extra, f"documented but not in core.config.SPECS: {extra}"


def test_settings_has_one_field_per_spec_in_order_typed_as_its_parser_returns():
    import typing

    fields = typing.get_type_hints(config.Settings)
    assert list(fields) == [spec.field for spec in config.SPECS]
    for spec in config.SPECS:
        parser = spec.parse.__call__ if isinstance(spec.parse, config._Choice) else spec.parse
        assert fields[spec.field] == typing.get_type_hints(parser)["return"], spec.name
