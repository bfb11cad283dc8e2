"""``alignmesh scale rollout=3`` on a local cluster: the launcher starts or drains replicas to match the counts the
coordinator was asked for (``ScaleRole``), the way a Kubernetes Deployment controller reconciles replicas.

A new replica is started on fresh ports, registered with the coordinator once it is healthy (and its
registration renewed while it runs); running jobs take it in at their next step, at the current weight version.
A replica to remove (the highest-numbered first) is marked leaving; once the coordinator says it is drained (no
running job gives it work) it is stopped with SIGTERM, so calls it is serving finish; a call cut short anyway is
re-issued to another replica by the job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from alignmesh.deploy.announce import member_client
from alignmesh.deploy.local import LocalCluster, Member

LEASE_S, RENEW_S, DRAIN_TIMEOUT_S, START_TIMEOUT_S = 30.0, 5.0, 120.0, 180.0


@dataclass
class Scaler:
    cluster: LocalCluster
    say: Callable[[str], None] = print
    starting: dict[str, float] = field(default_factory=dict)  # member name -> deadline
    registered: dict[str, float] = field(default_factory=dict)  # member name -> next renewal
    draining: dict[str, float] = field(default_factory=dict)  # member name -> deadline
    _client: object = None

    def client(self):
        if self._client is None:
            self._client = member_client(self.cluster.coordinator_address(), self.cluster.cfg.security, timeout_s=3)
        return self._client

    def tick(self) -> None:
        """One reconciliation pass; a coordinator that does not answer is tried again on the next pass."""
        import grpc

        try:
            members, desired = self.client().members()
            self._progress({(m.role, m.address): m.state for m in members})
            self._reconcile(desired)
        except (grpc.RpcError, OSError):  # the client's typed errors are RpcErrors too
            return

    def _reconcile(self, desired: dict[str, int]) -> None:
        for role, want in desired.items():
            mine = [m for m in self.cluster.members if m.role == role and m.name not in self.draining]
            for _ in range(want - len(mine)):
                m = self.cluster.add_member(role)
                self.starting[m.name] = time.monotonic() + START_TIMEOUT_S
                self.say(f"{m.name}: starting on port {m.port} ({role} replicas: {want} asked)")
            for m in sorted(mine, key=lambda m: m.replica)[want:]:
                self.client().register_member(role, self.cluster.address(m), leaving=True)
                self.draining[m.name] = time.monotonic() + DRAIN_TIMEOUT_S
                self.registered.pop(m.name, None)
                self.starting.pop(m.name, None)
                self.say(f"{m.name}: draining ({role} replicas: {want} asked)")

    def _progress(self, states: dict) -> None:
        now = time.monotonic()
        for m in list(self.cluster.members):
            if m.name in self.starting:
                self._start(m, now)
            elif m.name in self.registered and now >= self.registered[m.name]:
                self._register(m)
            elif m.name in self.draining:
                drained = states.get((m.role, self.cluster.address(m))) in ("drained", None)
                if drained or now > self.draining[m.name]:
                    self.draining.pop(m.name)
                    self.cluster.remove_member(m)
                    self.say(f"{m.name}: stopped ({'drained' if drained else 'drain timed out'})")

    def _start(self, m: Member, now: float) -> None:
        state = self.cluster.member_state(m)
        if state == "serving":
            self._register(m)
            self.starting.pop(m.name)
            self.say(f"{m.name}: serving at {self.cluster.address(m)}; registered with the coordinator")
        elif state == "exited" or now > self.starting[m.name]:
            self.starting.pop(m.name)
            self.cluster.remove_member(m)
            self.say(f"{m.name}: did not start ({state}; log: {m.log}); removed")

    def _register(self, m: Member) -> None:
        self.client().register_member(m.role, self.cluster.address(m), lease_s=LEASE_S)
        self.registered[m.name] = time.monotonic() + RENEW_S

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
