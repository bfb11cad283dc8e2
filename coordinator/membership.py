"""Who the rollout, reward and reference replicas are, while jobs run.

Three sources, merged: the cluster config's ``endpoints`` (fixed), entries written ``dns:///host:port`` there
(every address the name resolves to, re-resolved at each step: a Kubernetes headless Service or a compose service
name), and registrations (``RegisterMember``, renewed before their lease ends; the local launcher registers the
replicas it starts). A running job applies the current membership at every step boundary
(``FlowContext.refresh_members``): a new replica receives the current weights over the side channel before it
gets work; a leaving one gets no new work, finishes what it has, and is "drained" once every running job has let
it go. The trainer and critic are not elastic.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from alignmesh.services.common.errors import InvalidArgument, Unavailable

ELASTIC = ("rollout", "reward", "reference")
DNS_PREFIX = "dns:///"
MAX_REPLICAS = 64
DEFAULT_LEASE_S, MAX_LEASE_S = 30.0, 3600.0
MAX_REGISTERED = 256  # live registrations per role: a caller cannot grow the tables without end
MAX_ADDRESS = 255


@dataclass
class MemberView:
    role: str
    address: str
    source: str  # config | dns | registered
    state: str  # active | draining | drained
    lease_left_s: float = 0.0
    metrics_address: str = ""


def check_address(address: str, field: str = "address") -> str:
    if len(address) > MAX_ADDRESS:
        raise InvalidArgument(field, f"at most {MAX_ADDRESS} characters, got {len(address)}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address):
        raise InvalidArgument(field, f"must be host:port, got {address!r}")
    return address


async def resolve_dns(entry: str) -> list[str]:
    """``dns:///host:port`` → every ``ip:port`` the name resolves to now (sorted; [] when it does not resolve)."""
    host, _, port = entry[len(DNS_PREFIX):].rpartition(":")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError:
        return []
    out = {f"[{i[4][0]}]:{port}" if ":" in i[4][0] else f"{i[4][0]}:{port}" for i in infos}
    return sorted(out)


class Membership:
    def __init__(self, endpoints: dict[str, list[str]], clock=time.monotonic):
        self.static = {r: [a for a in endpoints.get(r, []) if not a.startswith(DNS_PREFIX)] for r in ELASTIC}
        self.dns = {r: [a for a in endpoints.get(r, []) if a.startswith(DNS_PREFIX)] for r in ELASTIC}
        self.resolved: dict[str, list[str]] = {r: [] for r in ELASTIC}
        self.names: dict[str, str] = {}  # resolved address -> the DNS name it came from
        self.leases: dict[tuple[str, str], float] = {}  # (role, address) -> expiry (clock)
        self.leaving: dict[tuple[str, str], int] = {}  # (role, address) -> generation at which it left
        self.metrics: dict[tuple[str, str], str] = {}  # (role, address) -> its metrics host:port, if registered
        self.desired: dict[str, int] = {}
        self.generation = 0  # bumped by every change a job must apply
        self.applied: dict[str, int] = {}  # job id -> generation it has applied
        self.clock = clock

    # -- changes ------------------------------------------------------------------------------------------
    def register(self, role: str, address: str, lease_s: float = 0.0, leaving: bool = False,
                 metrics_address: str = "") -> MemberView:
        _check_role(role)
        check_address(address)
        if metrics_address:
            check_address(metrics_address, "metrics_address")
        if not 0 <= lease_s <= MAX_LEASE_S:
            raise InvalidArgument("lease_s", f"must be in [0, {MAX_LEASE_S:.0f}] seconds (0: "
                                             f"{DEFAULT_LEASE_S:.0f}), got {lease_s}")
        key = (role, address)
        now = self.clock()
        live = sum(r == role and until > now for (r, _), until in self.leases.items())
        if key not in self.leases and not leaving and live >= MAX_REGISTERED:
            raise InvalidArgument("address", f"{role} already has {MAX_REGISTERED} live registrations; let some "
                                             f"expire or leave first")
        if metrics_address:
            self.metrics[key] = metrics_address
        known = key in self.leases or address in self.static[role] or address in self.resolved[role]
        if leaving:
            if key not in self.leaving and known:  # leaving an unknown address records nothing
                self.generation += 1
                self.leaving[key] = self.generation
        else:
            if key in self.leaving or not known:
                self.generation += 1
            self.leaving.pop(key, None)
            self.leases[key] = self.clock() + (lease_s or DEFAULT_LEASE_S)
        return self.view(role, address)

    def scale(self, role: str, replicas: int) -> int:
        _check_role(role, "role")
        low = 1 if role == "rollout" else 0
        if not low <= replicas <= MAX_REPLICAS:
            raise InvalidArgument("replicas", f"{role} must have {low} to {MAX_REPLICAS} replicas, got {replicas}")
        self.desired[role] = replicas
        return replicas

    async def refresh_dns(self) -> None:
        for role in ELASTIC:
            found = set()
            for entry in self.dns[role]:
                for address in await resolve_dns(entry):
                    found.add(address)
                    self.names[address] = entry[len(DNS_PREFIX):].rpartition(":")[0]
            found = sorted(found)
            if found != self.resolved[role]:
                self.resolved[role] = found
                self.generation += 1

    # -- what jobs use ------------------------------------------------------------------------------------
    def addresses(self, role: str) -> list[str]:
        """The active members of ``role``, config first, then resolved, then registered (oldest first)."""
        now = self.clock()
        registered = [a for (r, a), until in self.leases.items() if r == role and until > now]
        out: list[str] = []
        for addr in [*self.static.get(role, []), *self.resolved.get(role, []), *registered]:
            if addr not in out and (role, addr) not in self.leaving:
                out.append(addr)
        return out

    def authority(self, address: str) -> str | None:
        """The DNS name a resolved member's TLS certificate is checked against (None: its address)."""
        return self.names.get(address)

    def pools_addresses(self, endpoints: dict[str, list[str]]) -> dict[str, list[str]]:
        """The addresses a job starts with: the elastic roles' current members, the others from the config."""
        out = {role: list(addrs) for role, addrs in endpoints.items()}
        for role in ELASTIC:
            out[role] = self.addresses(role)
            if not out[role]:
                raise Unavailable(f"no {role} replica is known: none in endpoints.{role}, none resolved from its "
                                  f"dns:/// names, none registered")
        return out

    def applied_by(self, job_id: str, generation: int) -> None:
        """``job_id`` now works with the membership of ``generation``."""
        self.applied[job_id] = generation

    def detach(self, job_id: str) -> None:
        self.applied.pop(job_id, None)

    # -- views --------------------------------------------------------------------------------------------
    def view(self, role: str, address: str) -> MemberView:
        key, now = (role, address), self.clock()
        source = ("config" if address in self.static.get(role, []) else
                  "dns" if address in self.resolved.get(role, []) else "registered")
        left = max(0.0, self.leases.get(key, now) - now)
        if key in self.leaving:
            done = all(g >= self.leaving[key] for g in self.applied.values())
            state = "drained" if done else "draining"
        elif source == "registered" and left <= 0:
            state = "drained"  # the lease ran out: treated as gone
        else:
            state = "active"
        return MemberView(role, address, source, state, left if source == "registered" else 0.0,
                          self.metrics.get(key, ""))

    def members(self) -> list[MemberView]:
        self._forget_gone()
        keys = [(r, a) for r in ELASTIC for a in [*self.static[r], *self.resolved[r]]]
        keys += [k for k in [*self.leases, *self.leaving] if k not in keys]
        return [self.view(r, a) for r, a in dict.fromkeys(keys)]


    def _forget_gone(self, after_s: float = 600.0) -> None:
        """Registrations whose lease ended ``after_s`` ago are forgotten (a job that still had them dropped them
        when the lease ended)."""
        now = self.clock()
        for key, until in list(self.leases.items()):
            if until < now - after_s:
                del self.leases[key]
                self.leaving.pop(key, None)
                self.metrics.pop(key, None)

    def scrape_targets(self) -> list[dict]:
        """Prometheus file_sd groups: the metrics addresses of the active registered members, by role."""
        groups = {}
        for v in self.members():
            if v.metrics_address and v.state == "active":
                groups.setdefault(v.role, []).append(v.metrics_address)
        return [{"targets": sorted(t), "labels": {"service": role}} for role, t in sorted(groups.items())]


def _check_role(role: str, field: str = "role") -> None:
    if role not in ELASTIC:
        raise InvalidArgument(field, f"must be one of {', '.join(ELASTIC)} (the trainer and critic are not "
                                     f"elastic), got {role!r}")
