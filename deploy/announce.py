"""``alignmesh serve ROLE --register-with COORDINATOR``: a replica that announces itself.

Once serving, the replica registers its address with the coordinator (``RegisterMember``) and renews the lease
every ``every_s`` seconds, so that a coordinator restarted meanwhile learns it again within one renewal. On
SIGTERM it says it is leaving and keeps answering until the coordinator reports it drained (running jobs give it
no new work from their next step), then stops serving. For replicas that no
list or DNS name knows in advance: compose ``--scale`` on host networking (each replica on a port of its own),
bare-metal fleets. Registration failures are logged and retried; they never stop the service.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

log = logging.getLogger("alignmesh.announce")


class Announcer:
    def __init__(self, role: str, coordinator: str, advertise_host: str, security, lease_s: float = 30.0,
                 every_s: float = 5.0):
        self.role, self.coordinator, self.advertise_host = role, coordinator, advertise_host
        self.security, self.lease_s, self.every_s = security, lease_s, every_s
        self.address = self.metrics_address = ""
        self._task: asyncio.Task | None = None
        self._client = None

    def client(self):
        if self._client is None:
            self._client = member_client(self.coordinator, self.security, timeout_s=5)
        return self._client

    def started(self, port: int, metrics_port: int = 0) -> None:
        self.address = f"{self.advertise_host}:{port}"
        self.metrics_address = f"{self.advertise_host}:{metrics_port}" if metrics_port else ""
        self._task = asyncio.create_task(self._renew(), name="announce")

    async def _renew(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.client().register_member, self.role, self.address, self.lease_s,
                                        False, self.metrics_address)
                if failing:
                    log.info("registered with the coordinator at %s again", self.coordinator)
                failing = False
            except Exception as exc:  # noqa: BLE001 - retried; the service keeps serving
                if not failing:
                    log.warning("cannot register %s with the coordinator at %s: %s; retrying every %.0fs",
                                self.address, self.coordinator, exc, self.every_s)
                failing = True
            await asyncio.sleep(self.every_s)

    async def stopping(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await asyncio.to_thread(self.client().register_member, self.role, self.address, 0.0, True)
            log.info("told the coordinator that %s is leaving", self.address)
            await self._until_drained()
        except Exception as exc:  # noqa: BLE001 - its lease runs out instead
            log.warning("could not tell the coordinator that %s is leaving: %s", self.address, exc)
        self.client().close()

    async def _until_drained(self, wait_s: float = 10.0) -> None:
        """Keep serving until every running job has stopped giving this replica work (the coordinator says
        "drained"; jobs apply membership between steps), at most ``wait_s``: calls already sent still arrive and
        are answered, instead of being cut off by the stop."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while asyncio.get_running_loop().time() < deadline:
            members = (await asyncio.to_thread(self.client().members))[0]
            state = next((m.state for m in members if m.address == self.address), "drained")
            if state == "drained":
                log.info("%s is drained: no job gives it work any more", self.address)
                return
            await asyncio.sleep(0.2)
        log.warning("%s: still not drained after %.0fs; stopping anyway", self.address, wait_s)


def member_client(address: str, security, timeout_s: float):
    """A client of the coordinator with the cluster's own credentials (its token; with a CA, its certificate), as
    a cluster member calls it; no retries: the callers try again on their own schedule."""
    from alignmesh.clients.client import Client

    tls = security.tls
    mutual = tls is not None and tls.ca is not None
    return Client(address, token=security.bearer(), timeout_s=timeout_s, retries=0,
                  root_certificates=Path(tls.ca).read_bytes() if mutual else None,
                  private_key=Path(tls.key).read_bytes() if mutual else None,
                  certificate_chain=Path(tls.cert).read_bytes() if mutual else None)


def advertise_host(bind_host: str, given: str | None) -> str:
    """The host others reach this replica at: ``--advertise``, else the bind host, else (bound to every
    interface) this machine's name."""
    if given:
        return given
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    return socket.getfqdn()
