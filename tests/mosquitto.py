"""What the security tests add to pfl_edge.broker: a throwaway fleet made by
pfl_edge.certs (CA, coordinator and broker certificates, agents agent-a and agent-b with
their certificates, broker passwords and ACL lines), whose files
`pfl_edge.broker.secure_config` puts into the deployed mosquitto.conf, so what operators
deploy is what the tests exercise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pfl_edge import certs
from pfl_edge.transport.credentials import TlsFiles
from pfl_edge.transport.mqtt_common import COORDINATOR_USERNAME

HOSTS = ("127.0.0.1", "localhost")
AGENTS = ("agent-a", "agent-b")


@dataclass(frozen=True)
class Certs:
    """A fleet directory of pfl_edge.certs and what clients take from it."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def client_tls(self, mutual: bool = False, user: str = "agent-a") -> TlsFiles:
        """TLS files of `user` (an agent id or "coordinator"): the CA; with `mutual`, its
        certificate and key as well."""
        if not mutual:
            return TlsFiles(str(self.ca))
        if user == COORDINATOR_USERNAME:
            cert, key = self.folder / "coordinator.crt", self.folder / "coordinator.key"
        else:
            cert, key = (self.folder / "agents" / user / n for n in ("agent.crt", "agent.key"))
        return TlsFiles(str(self.ca), str(cert), str(key))

    def passwords(self) -> dict[str, str]:
        """Broker password of every account of the fleet (the first line of its file)."""
        files = {COORDINATOR_USERNAME: self.folder / "coordinator.mqtt-password"}
        for agent in sorted(p.name for p in (self.folder / "agents").iterdir()):
            files[agent] = self.folder / "agents" / agent / "mqtt-password"
        return {user: f.read_text().splitlines()[0] for user, f in files.items()}


def make_fleet(folder: Path, agents: tuple[str, ...] = AGENTS) -> Certs:
    """A fleet for 127.0.0.1 and localhost with `agents` registered."""
    certs.init_fleet(folder, hosts=HOSTS)
    for agent in agents:
        certs.add_agent(folder, agent)
    return Certs(folder)
