"""pfl_edge.fleet, the registry the coordinator admits agents by: its reasons, its file
(what a hand edit can break, what a save must never break) and the fingerprint. Standard
library only, like the module: these run where `cryptography` is not installed.
(tests/test_certs.py checks the fingerprint against real certificates.)"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from types import MappingProxyType

import pytest

from pfl_edge import fleet

FP_A, FP_B = "a" * 64, "b" * 64


def registry(*members: fleet.Member) -> fleet.Registry:
    return fleet.Registry(MappingProxyType({m.agent_id: m for m in members}))


def test_admits_a_member_with_its_certificate_and_says_why_not_otherwise() -> None:
    reg = registry(fleet.Member("agent-00", FP_A, "2026-12-02T12:00:00Z"))
    assert reg.admits("agent-00", FP_A) is None
    assert reg.admits("agent-00", None) is None  # no client certificate: membership only
    assert reg.admits("agent-00", FP_B) == (
        "certificate of 'agent-00' is not the one registered (re-issued or revoked)"
    )
    assert reg.admits("agent-01", FP_A) == "agent 'agent-01' is not in the fleet registry"
    assert reg.admits("agent-01", None) == "agent 'agent-01' is not in the fleet registry"


def test_with_member_replaces_and_without_drops_leaving_the_original_unchanged() -> None:
    reg = registry(fleet.Member("a", FP_A, "t0"), fleet.Member("b", FP_A, "t0"))
    reissued = reg.with_member(fleet.Member("a", FP_B, "t1")).without("b")
    assert dict(reissued.members) == {"a": fleet.Member("a", FP_B, "t1")}
    assert reg.members["a"].cert_sha256 == FP_A and "b" in reg.members


def test_save_then_load_round_trips_even_odd_strings(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    added = 'by "ops" \\ on\nmonday\t\x7f é'  # a hand edit: quotes, backslash, controls
    reg = registry(fleet.Member("agent-00", FP_A, "2026-12-02T12:00:00Z"))
    reg = reg.with_member(fleet.Member("pi.2_b", FP_B, added))
    fleet.save(path, reg)
    assert fleet.load(path) == reg
    assert path.read_text().startswith("# pfl-edge fleet registry")
    fleet.save(path, fleet.Registry())
    assert fleet.load(path).members == {}


def test_save_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    fleet.save(path, registry(fleet.Member("a", FP_A, "")))
    before = path.stat().st_ino
    fleet.save(path, fleet.Registry())
    # A new inode: a reader holding the old file sees it whole, the coordinator sees a change.
    assert path.stat().st_ino != before
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.toml"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[agents.a\n", "not valid TOML"),
        ("[users.a]\n", "unknown table"),
        ("agents = 3\n", r"\[agents\] must be a table"),
        ('[agents."a/b"]\ncert_sha256 = "' + FP_A + '"\n', "agents.a/b: agent id 'a/b' cannot"),
        ('[agents.a]\ncert_sha256 = "xyz"\n', "64 lowercase hex"),
        ('[agents.a]\ncert_sha256 = "' + "A" * 64 + '"\n', "64 lowercase hex"),
        ('[agents.a]\ncert_sha256 = "' + FP_A + '"\nrole = "x"\n', "nothing else"),
        ('[agents.a]\nadded = "x"\n', "needs cert_sha256"),
        ('[agents.a]\ncert_sha256 = "' + FP_A + '"\nadded = 2026-12-02\n', "added must be"),
    ],
)
def test_a_bad_registry_file_says_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        fleet.load(path)


def test_a_missing_registry_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read fleet registry .*missing\.toml"):
        fleet.load(tmp_path / "missing.toml")


def test_cert_sha256_is_of_the_first_certificates_der() -> None:
    first, second = b"\x30\x03first-der", b"\x30\x03second-der"
    bundle = ssl.DER_cert_to_PEM_cert(first) + ssl.DER_cert_to_PEM_cert(second)
    want = hashlib.sha256(first).hexdigest()
    assert fleet.cert_sha256(bundle.encode()) == want
    assert fleet.cert_sha256(bundle) == want
    with pytest.raises(ValueError, match="not a PEM certificate"):
        fleet.cert_sha256(b"no certificate here")
