"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from pfl_edge.broker import Broker
from pfl_edge.netproxy import free_port
from tests.mosquitto import Certs, make_certs, secure_config, write_passwords

T = TypeVar("T")


def _with_tools(make: Callable[[], T]) -> T:
    """`make()`; a missing mosquitto or openssl fails the test (never skips it)."""
    try:
        return make()
    except FileNotFoundError as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free loopback port: anonymous, persistence on."""
    broker = _with_tools(lambda: Broker(tmp_path / "mosquitto").start())
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return _with_tools(lambda: make_certs(tmp_path_factory.mktemp("certs")))


SECURE_PASSWORDS = {"coordinator": "pw-coordinator", "agent-a": "pw-a", "agent-b": "pw-b"}


@dataclass(frozen=True)
class SecureBroker:
    broker: Broker
    certs: Certs
    passwords: dict[str, str]


def _secure(tmp_path: Path, certs: Certs, *, require_certificate: bool) -> Iterator[SecureBroker]:
    def start() -> Broker:
        workdir = tmp_path / "mosquitto"
        workdir.mkdir()
        passwd = write_passwords(workdir / "passwd", SECURE_PASSWORDS)
        port = free_port()
        config = secure_config(
            workdir, port, certs, passwd, require_certificate=require_certificate
        )
        return Broker(workdir, config, port).start()

    broker = _with_tools(start)
    try:
        yield SecureBroker(broker, certs, SECURE_PASSWORDS)
    finally:
        broker.stop()


@pytest.fixture
def secure_mosquitto(tmp_path: Path, certs: Certs) -> Iterator[SecureBroker]:
    """deploy/mosquitto/mosquitto.conf as shipped (TLS, passwords, the deploy ACL file) on a
    free loopback port, with accounts coordinator, agent-a and agent-b."""
    yield from _secure(tmp_path, certs, require_certificate=False)


@pytest.fixture
def mutual_tls_mosquitto(tmp_path: Path, certs: Certs) -> Iterator[SecureBroker]:
    """As `secure_mosquitto`, with require_certificate true (clients need a certificate)."""
    yield from _secure(tmp_path, certs, require_certificate=True)
