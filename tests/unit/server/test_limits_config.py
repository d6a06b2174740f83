"""auth.failure-limit, auth.failure-window and the http.* limits: defaults and refusals."""

from __future__ import annotations

import resource

import pytest

from certctl.errors import InvalidRequest
from certctl.server.config import load_config
from certctl.server.run import FD_RESERVE, connection_limit


def test_defaults() -> None:
    config = load_config(None, {})
    assert config.auth.failure_limit == 10
    assert config.auth.failure_window == "1m"
    assert config.http.header_timeout == "10s"
    assert config.http.handshake_timeout == "10s"
    assert config.http.max_connections is None
    assert (config.http.body_timeout, config.http.send_timeout) == ("60s", "60s")


def test_overrides() -> None:
    config = load_config(
        None,
        {"auth.failure-limit": 0, "auth.failure-window": "5m", "http.header-timeout": "30s"},
    )
    assert config.auth.failure_limit == 0  # 0 turns the throttle off
    assert config.auth.failure_window == "5m"
    assert config.http.header_timeout == "30s"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("auth.failure-limit", -1, "auth.failure-limit"),
        ("auth.failure-window", "soon", "auth.failure-window"),
        ("http.header-timeout", "0s", "http.header-timeout"),
        ("http.handshake-timeout", "0s", "http.handshake-timeout"),
        ("http.handshake-timeout", "soon", "http.handshake-timeout"),
        ("http.max-connections", 0, "http.max-connections"),
        ("http.max-connections", "many", "http.max-connections"),
        ("http.body-timeout", "0s", "http.body-timeout"),
        ("http.send-timeout", "never", "http.send-timeout"),
        ("http.header-time", "5s", "http.header-time"),
    ],
)
def test_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        load_config(None, {key: value})


def test_max_connections_default_follows_the_open_file_limit() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = connection_limit(load_config(None, {}))
    assert limit == max(soft - FD_RESERVE, soft // 2)
    assert limit < soft  # descriptors are left for the database, logs and certificates
    assert connection_limit(load_config(None, {"http.max-connections": 7})) == 7


def test_max_connections_beyond_the_hard_limit_is_refused() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    config = load_config(None, {"http.max-connections": hard})
    with pytest.raises(InvalidRequest, match=f"hard limit is {hard}"):
        connection_limit(config)
