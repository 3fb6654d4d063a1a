"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from pfl_edge.broker import Broker, secure_config
from pfl_edge.netproxy import free_port
from tests.mosquitto import Certs, make_fleet

T = TypeVar("T")


def _with_tools(make: Callable[[], T]) -> T:
    """`make()`; a missing mosquitto fails the test (never skips it)."""
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
    """A fleet (pfl_edge.certs) with agents agent-a and agent-b; tests must not change it."""
    return make_fleet(tmp_path_factory.mktemp("fleet"))


@dataclass(frozen=True)
class SecureBroker:
    broker: Broker
    certs: Certs
    passwords: dict[str, str]


def secure_broker(tmp_path: Path, certs: Certs, *, require_certificate: bool) -> SecureBroker:
    """A started mosquitto of deploy/mosquitto/mosquitto.conf with the fleet's files."""

    def start() -> Broker:
        workdir = tmp_path / "mosquitto"
        port = free_port()
        config = secure_config(workdir, port, certs.folder, require_certificate=require_certificate)
        return Broker(workdir, config, port).start()

    return SecureBroker(_with_tools(start), certs, certs.passwords())


@pytest.fixture
def secure_mosquitto(tmp_path: Path, certs: Certs) -> Iterator[SecureBroker]:
    """deploy/mosquitto/mosquitto.conf with passwords over TLS (require_certificate false)
    and the fleet's accounts and ACL on a free loopback port: coordinator, agent-a, agent-b."""
    sb = secure_broker(tmp_path, certs, require_certificate=False)
    try:
        yield sb
    finally:
        sb.broker.stop()


@pytest.fixture
def mutual_tls_mosquitto(tmp_path: Path, certs: Certs) -> Iterator[SecureBroker]:
    """As `secure_mosquitto`, as deployed: mutual TLS, the certificate's name the username."""
    sb = secure_broker(tmp_path, certs, require_certificate=True)
    try:
        yield sb
    finally:
        sb.broker.stop()
