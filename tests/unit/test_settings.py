"""Settings from the environment: parsing, refusals that name the variable, and the README."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from flashsale.config import SETTINGS, Settings, SettingsError
from tests.support import REPO

README = REPO / "README.md"
KEY = "k" * 32


def test_defaults_without_env() -> None:
    settings = Settings.from_env({})
    for f in fields(Settings):
        assert getattr(settings, f.name) == f.metadata["setting"].default
    assert settings == Settings()


def test_parses_ints_bools_floats_and_strings() -> None:
    settings = Settings.from_env(
        {
            "FLASHSALE_PORT": "9000",
            "FLASHSALE_WORKERS": " 4 ",
            "FLASHSALE_COOKIE_SECURE": "true",
            "FLASHSALE_LOG_JSON": "off",
            "FLASHSALE_ADMITTER_REFRESH_SECONDS": "0.5",
            "FLASHSALE_ADMIN_TOKEN": "secret",
            "FLASHSALE_TOKEN_KEY": KEY,
            "REDIS_URL": "redis://cache:6380/2",
            "UNRELATED": "ignored",
        }
    )
    assert settings.port == 9000 and isinstance(settings.port, int)
    assert settings.workers == 4
    assert settings.cookie_secure is True
    assert settings.log_json is False
    assert settings.admitter_refresh_seconds == 0.5
    assert settings.admin_token == "secret"
    assert settings.token_key == KEY
    assert settings.redis_url == "redis://cache:6380/2"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        (" On ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("False", False),
    ],
)
def test_bool_forms(raw: str, expected: bool) -> None:
    assert Settings.from_env({"FLASHSALE_COOKIE_SECURE": raw}).cookie_secure is expected


def test_empty_values_mean_default() -> None:
    assert Settings.from_env({"FLASHSALE_PORT": "", "FLASHSALE_COOKIE_SECURE": ""}) == Settings()


def test_overrides_win_over_env() -> None:
    settings = Settings.from_env({"FLASHSALE_PORT": "9000"}, port=9100)
    assert settings.port == 9100


@pytest.mark.parametrize(
    ("env", "raw"),
    [
        ("FLASHSALE_PORT", "eighty"),
        ("FLASHSALE_PORT", "80.5"),
        ("FLASHSALE_WORKERS", "2x"),
        ("FLASHSALE_JOIN_LIMIT_PER_VISITOR", "1e3"),
        ("FLASHSALE_STATUS_CACHE_MS", "true"),
        ("FLASHSALE_COOKIE_SECURE", "maybe"),
        ("FLASHSALE_LOG_JSON", "2"),
        ("FLASHSALE_ADMITTER_REFRESH_SECONDS", "soon"),
        ("FLASHSALE_MAX_BODY_BYTES", "16 KB"),
    ],
)
def test_bad_values_name_the_variable(env: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=env) as info:
        Settings.from_env({env: raw})
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize("env", ["FLASHSALE_TOKEN_KEY", "FLASHSALE_TOKEN_KEY_PREVIOUS"])
@pytest.mark.parametrize("key", ["short", "k" * 31])
def test_short_token_keys_rejected(env: str, key: str) -> None:
    with pytest.raises(SettingsError, match="FLASHSALE_TOKEN_KEY"):
        Settings.from_env({env: key})


def test_token_key_of_32_accepted() -> None:
    settings = Settings.from_env({"FLASHSALE_TOKEN_KEY": KEY, "FLASHSALE_TOKEN_KEY_PREVIOUS": KEY})
    assert settings.signing_keys() == (KEY.encode(), KEY.encode())


@pytest.mark.parametrize(
    ("env", "raw", "words"),
    [
        ("FLASHSALE_REDIS_PREFIX", "fs:x", "FLASHSALE_REDIS_PREFIX"),
        ("FLASHSALE_REDIS_PREFIX", "a b", "FLASHSALE_REDIS_PREFIX"),
        ("FLASHSALE_DATABASE_SCHEMA", "public; drop", "FLASHSALE_DATABASE_SCHEMA"),
        ("FLASHSALE_DATABASE_SCHEMA", "a-b", "FLASHSALE_DATABASE_SCHEMA"),
        ("FLASHSALE_WORKERS", "0", "FLASHSALE_WORKERS"),
        ("FLASHSALE_JOIN_BUCKETS", "0", "FLASHSALE_JOIN_BUCKETS"),
        ("FLASHSALE_RATE_WINDOW_SECONDS", "-1", "FLASHSALE_RATE_WINDOW_SECONDS"),
        ("FLASHSALE_STATUS_CACHE_MS", "-1", "FLASHSALE_STATUS_CACHE_MS"),
        ("FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS", "0", "FLASHSALE_REDIS_COMMAND_TIMEOUT_SECONDS"),
        ("FLASHSALE_REDIS_CLUSTER", "yes", "FLASHSALE_REDIS_CLUSTER must be auto, true or false"),
        ("FLASHSALE_SALE_TIMEOUT_SECONDS", "0", "FLASHSALE_SALE_TIMEOUT_SECONDS"),
    ],
)
def test_invalid_values_rejected(env: str, raw: str, words: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(words)):
        Settings.from_env({env: raw})


def test_status_cache_may_be_zero() -> None:
    assert Settings.from_env({"FLASHSALE_STATUS_CACHE_MS": "0"}).status_cache_ms == 0


def test_every_field_is_a_setting_with_a_unique_variable() -> None:
    names = [s.env for s in SETTINGS]
    assert len(names) == len(fields(Settings)) == len(set(names))
    for setting in SETTINGS:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", setting.env)
        assert setting.help.strip()


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSALE_PORT", "8123")
    assert Settings.from_env().port == 8123
    monkeypatch.setenv("FLASHSALE_PORT", "nope")
    with pytest.raises(SettingsError, match="FLASHSALE_PORT"):
        Settings.from_env()


def test_readme_documents_every_setting() -> None:
    """Every variable in SETTINGS appears in a row of README.md's settings table."""
    if not README.exists():
        pytest.skip("README.md not written yet")
    rows = [line for line in README.read_text().splitlines() if line.lstrip().startswith("|")]
    documented = set()
    for line in rows:
        documented.update(re.findall(r"[A-Z][A-Z0-9_]{2,}", line))
    missing = [s.env for s in SETTINGS if s.env not in documented]
    assert not missing, f"README.md's settings table lacks {missing}"
