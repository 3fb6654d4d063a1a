"""Who may register, unit by unit: the identity a handshake proved, the fleet registry
(re-read when it changes), the registration rate, the profile's bounds, and the [server]
keys that switch them on."""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

import pytest

from coordinator.admission import Admission, TokenBucket, check_profile
from coordinator.config import ConfigError, RunConfig, ServerSection
from coordinator.service import FDS_BESIDES_CONNECTIONS, raise_fd_limit
from pfl_edge.errors import Rejection
from pfl_edge.transport.base import Identity
from pfl_edge.v1 import messages_pb2 as pb

FP_A, FP_B = "a" * 64, "b" * 64


def register(**device: object) -> pb.Register:
    return pb.Register(
        device=pb.DeviceProfile(**device),  # type: ignore[arg-type]
        model=pb.ModelInfo(architecture="lenet5", parameter_count=10, input_shape=[1, 8, 8]),
        num_train_samples=100,
    )


def write_fleet(path: Path, members: dict[str, str]) -> Path:
    lines = [
        f'[agents.{a}]\ncert_sha256 = "{fp}"\nadded = "2026-12-02T12:00:00Z"\n'
        for a, fp in members.items()
    ]
    path.write_text("\n".join(lines))
    return path


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back at 2 per second
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] = 100.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_registrations_above_the_rate_are_refused_as_busy() -> None:
    now = [0.0]
    admission = Admission(None, register_rate=1.0, clock=lambda: now[0])
    for i in range(10):  # bursts of 10 s worth
        admission.check(f"a{i}", register(), None)
    with pytest.raises(Rejection, match="too many registrations") as e:
        admission.check("b", register(), None)
    assert e.value.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    now[0] = 1.0
    admission.check("b", register(), None)


def test_one_agent_re_registering_in_a_loop_leaves_the_rate_to_others() -> None:
    now = [0.0]
    admission = Admission(None, register_rate=10.0, clock=lambda: now[0])
    for _ in range(5):
        admission.check("loop", register(), None)
    with pytest.raises(Rejection, match="'loop' registers too often") as e:
        admission.check("loop", register(), None)
    assert e.value.code == pb.ERROR_CODE_RESOURCE_EXHAUSTED
    admission.check("honest", register(), None)  # the run-wide bucket still has room
    now[0] = 2.0
    admission.check("loop", register(), None)


def test_certificate_of_one_agent_cannot_register_as_another() -> None:
    with pytest.raises(Rejection, match="certificate of agent 'a' may not register as 'b'") as e:
        Admission(None, 10.0).check("b", register(), Identity("a", FP_A))
    assert e.value.code == pb.ERROR_CODE_PERMISSION_DENIED


def test_registry_admits_members_with_their_certificate_only(tmp_path: Path) -> None:
    admission = Admission(write_fleet(tmp_path / "fleet.toml", {"a": FP_A}), 10.0)
    admission.check("a", register(), Identity("a", FP_A))
    admission.check("a", register(), None)  # no certificate (plaintext): membership only
    for agent_id, identity in (("a", Identity("a", FP_B)), ("z", Identity("z", FP_A))):
        with pytest.raises(Rejection) as e:
            admission.check(agent_id, register(), identity)
        assert e.value.code == pb.ERROR_CODE_PERMISSION_DENIED


def test_registry_is_reread_when_it_changes_and_kept_when_broken(tmp_path: Path) -> None:
    path = write_fleet(tmp_path / "fleet.toml", {"a": FP_A, "b": FP_B})
    admission = Admission(path, 10.0)
    assert not admission.reload(), "unchanged: not read again"
    write_fleet(path, {"b": FP_B})
    os.utime(path, ns=(1, 1))  # a new stamp even within one mtime tick
    assert admission.reload()
    assert admission.refusal("a", FP_A) is not None
    assert admission.refusal("b", FP_B) is None
    path.write_text("[agents.b\n")  # an editor's half-written file
    os.utime(path, ns=(2, 2))
    assert not admission.reload()
    assert admission.refusal("b", FP_B) is None, "the registry before it stays"


def test_a_missing_registry_is_a_config_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        Admission(tmp_path / "nope.toml", 10.0)


@pytest.mark.parametrize(
    ("reg", "field"),
    [
        (register(hostname="h" * 254), "device.hostname"),
        (register(cpu_arch="x" * 65), "device.cpu_arch"),
        (register(cpu_cores=2**32 - 1), "device.cpu_cores"),
        (register(memory_bytes=2**64 - 1), "device.memory_bytes"),
        (pb.Register(num_train_samples=2**64 - 1), "num_train_samples"),
        (pb.Register(model=pb.ModelInfo(input_shape=[1] * 5)), "input_shape"),
    ],
)
def test_profile_fields_are_bounded(reg: pb.Register, field: str) -> None:
    with pytest.raises(Rejection, match=field) as e:
        check_profile(reg)
    assert e.value.code == pb.ERROR_CODE_INVALID_ARGUMENT


def test_a_plausible_profile_passes() -> None:
    check_profile(
        register(hostname="jetson-01", cpu_arch="aarch64", cpu_cores=6, memory_bytes=8 << 30)
    )


def test_plaintext_grpc_off_loopback_needs_insecure() -> None:
    with pytest.raises(ConfigError, match="a loopback address without TLS"):
        RunConfig(server=ServerSection(grpc="0.0.0.0:50051"))
    RunConfig(server=ServerSection(grpc="0.0.0.0:50051", insecure=True))
    RunConfig(server=ServerSection(grpc="0.0.0.0:50051", grpc_tls_cert="c", grpc_tls_key="k"))
    RunConfig(server=ServerSection(grpc="[::1]:50051"))


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"grpc_tls_cert": "c"}, "grpc_tls_key = '' is invalid: must be given together"),
        ({"grpc_tls_client_ca": "ca"}, "mutual TLS needs TLS"),
        ({"grpc": "", "mqtt": "mqtt://h:1", "grpc_tls_cert": "c"}, "used with server.grpc"),
        ({"register_timeout_s": 0.0}, "positive"),
        ({"max_connections": 0}, "at least 1"),
    ],
)
def test_tls_and_limit_keys_are_validated(keys: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig(server=ServerSection(**keys))  # type: ignore[arg-type]


def test_open_file_limit_is_raised_for_the_connections_or_the_shortfall_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        with caplog.at_level(logging.INFO, logger="pfl_edge.coordinator"):
            got = raise_fd_limit(100)
        assert got == 100 + FDS_BESIDES_CONNECTIONS
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got
        assert "open-file limit raised from 256" in caplog.text
        caplog.clear()
        too_many = (hard if hard != resource.RLIM_INFINITY else 1 << 20) * 2
        with caplog.at_level(logging.WARNING, logger="pfl_edge.coordinator"):
            raise_fd_limit(too_many)
        if hard != resource.RLIM_INFINITY:
            assert "Raise the limit (systemd: LimitNOFILE=" in caplog.text
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
