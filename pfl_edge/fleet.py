"""The fleet registry: which agents may join, each with the certificate issued to it.

`pfl-edge certs` writes it (fleet.toml in the fleet folder); the coordinator reads it
(`[server] fleet`) and again whenever it changes, so removing a member takes effect
without a restart. An entry binds an agent id to the sha256 fingerprint of its
certificate: re-issuing an agent's certificate makes the old one useless, whatever CA
signed it. Standard library only, so the coordinator needs no crypto package for it.

    [agents.jetson-01]
    cert_sha256 = "9f86d0...e2"     # sha256 of the certificate's DER, 64 hex digits
    added = "2026-12-02T12:00:00Z"
"""

from __future__ import annotations

import hashlib
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pfl_edge.files import write_atomic
from pfl_edge.transport.mqtt_common import check_id

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = {"cert_sha256", "added"}
_TOML_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')

HEADER = (
    "# pfl-edge fleet registry: who may join, each with its certificate's sha256.\n"
    "# Written by `pfl-edge certs`; the coordinator re-reads it when it changes.\n"
)


@dataclass(frozen=True)
class Member:
    agent_id: str
    cert_sha256: str
    added: str


@dataclass(frozen=True)
class Registry:
    members: Mapping[str, Member] = field(default_factory=lambda: MappingProxyType({}))

    def admits(self, agent_id: str, cert_sha256: str | None) -> str | None:
        """None when `agent_id` may join with this certificate, else the reason.
        `cert_sha256` None (a link without a client certificate) checks membership only."""
        member = self.members.get(agent_id)
        if member is None:
            return f"agent {agent_id!r} is not in the fleet registry"
        if cert_sha256 is not None and cert_sha256 != member.cert_sha256:
            return f"certificate of {agent_id!r} is not the one registered (re-issued or revoked)"
        return None

    def with_member(self, member: Member) -> Registry:
        return Registry(MappingProxyType({**self.members, member.agent_id: member}))

    def without(self, agent_id: str) -> Registry:
        return Registry(MappingProxyType({a: m for a, m in self.members.items() if a != agent_id}))


def cert_sha256(pem: bytes | str) -> str:
    """sha256 (hex) of the DER encoding of the first certificate in `pem`."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    end = "-----END CERTIFICATE-----"
    first = text[: text.index(end) + len(end)] if end in text else text
    try:
        der = ssl.PEM_cert_to_DER_cert(first.strip() + "\n")
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(der).hexdigest()


def load(path: Path) -> Registry:
    """The registry in `path`; ValueError saying what is wrong with the file."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read fleet registry {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"fleet registry {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"agents"})
    if unknown:
        raise ValueError(f"fleet registry {path}: unknown table(s) {unknown}; known: agents")
    agents = data.get("agents", {})
    if not isinstance(agents, dict):
        raise ValueError(f"fleet registry {path}: [agents] must be a table")
    members: dict[str, Member] = {}
    for agent_id, entry in agents.items():
        where = f"fleet registry {path}, agents.{agent_id}"
        try:
            check_id("agent", agent_id)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if not isinstance(entry, dict) or set(entry) - _KEYS or "cert_sha256" not in entry:
            raise ValueError(f"{where}: needs cert_sha256 (and optionally added), nothing else")
        fingerprint, added = entry["cert_sha256"], entry.get("added", "")
        if not isinstance(fingerprint, str) or not _HEX64.fullmatch(fingerprint):
            raise ValueError(f"{where}: cert_sha256 must be 64 lowercase hex digits")
        if not isinstance(added, str):
            raise ValueError(f"{where}: added must be a string")
        members[agent_id] = Member(agent_id, fingerprint, added)
    return Registry(MappingProxyType(members))


def save(path: Path, registry: Registry) -> None:
    """Write `registry` atomically (a reader sees the old file or the new one, never half).
    Every string is escaped: an `added` edited by hand (quotes, backslashes) must not
    make the file unreadable, or the coordinator would keep the registry before it."""
    lines = [HEADER]
    for agent_id in sorted(registry.members):
        m = registry.members[agent_id]
        lines.append(
            f"\n[agents.{_toml_string(agent_id)}]\ncert_sha256 = {_toml_string(m.cert_sha256)}\n"
            f"added = {_toml_string(m.added)}\n"
        )
    write_atomic(path, "".join(lines))


def _toml_string(text: str) -> str:
    """`text` as a TOML basic string: quote, backslash and control characters escaped."""
    return '"' + _TOML_ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04X}", text) + '"'
