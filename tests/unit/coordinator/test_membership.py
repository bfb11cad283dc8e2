"""Elastic membership: config, DNS and registered members merged; leases; leaving members drain once every
running job has applied the change; bad registrations named."""

from __future__ import annotations

import asyncio

import pytest

from alignmesh.coordinator.membership import Membership, resolve_dns
from alignmesh.services.common.errors import InvalidArgument, Unavailable


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_registered_members_join_after_the_config_ones_and_expire_with_their_lease():
    clock = Clock()
    m = Membership({"rollout": ["a:1"], "reward": ["r:1"], "reference": ["f:1"]}, clock=clock)
    g0 = m.generation
    assert m.register("rollout", "b:2", lease_s=10).source == "registered"
    assert m.addresses("rollout") == ["a:1", "b:2"] and m.generation == g0 + 1
    m.register("rollout", "b:2", lease_s=10)  # a renewal changes nothing a job must apply
    assert m.generation == g0 + 1
    clock.t += 9
    assert m.view("rollout", "b:2").lease_left_s == pytest.approx(1.0)
    clock.t += 2
    assert m.addresses("rollout") == ["a:1"] and m.view("rollout", "b:2").state == "drained"


def test_a_leaving_member_drains_once_every_running_job_applied_the_change():
    m = Membership({"rollout": ["a:1"], "reward": ["r:1"], "reference": ["f:1"]})
    m.register("rollout", "b:2")
    m.applied_by("job-1", m.generation)
    assert m.register("rollout", "b:2", leaving=True).state == "draining"  # job-1 may still give it work
    assert m.addresses("rollout") == ["a:1"]
    m.applied_by("job-1", m.generation)  # job-1's next step boundary
    assert m.view("rollout", "b:2").state == "drained"
    assert m.register("rollout", "a:1", leaving=True).state == "draining"  # a config member may leave too
    m.detach("job-1")  # the job ended: nothing holds it
    assert m.view("rollout", "a:1").state == "drained"
    with pytest.raises(Unavailable, match="no rollout replica is known"):
        m.pools_addresses({"trainer": ["t:1"]})
    m.register("rollout", "a:1")  # back: active again
    assert m.pools_addresses({"trainer": ["t:1"], "rollout": ["a:1"]})["rollout"] == ["a:1"]


@pytest.mark.parametrize("call, field, text", [
    (lambda m: m.register("trainer", "a:1"), "role", "not elastic"),
    (lambda m: m.register("rollout", "nohost"), "address", "host:port"),
    (lambda m: m.register("rollout", "h:99999"), "address", "host:port"),
    (lambda m: m.register("rollout", "h:1", lease_s=-1), "lease_s", "must be in"),
    (lambda m: m.scale("rollout", 0), "replicas", "rollout must have 1 to 64"),
    (lambda m: m.scale("reward", 65), "replicas", "reward must have 0 to 64"),
])
def test_bad_requests_name_the_field(call, field, text):
    with pytest.raises(InvalidArgument, match=text) as err:
        call(Membership({}))
    assert err.value.field == field


def test_dns_entries_resolve_to_every_address_and_changes_bump_the_generation():
    m = Membership({"rollout": ["dns:///localhost:7000"], "reward": ["dns:///no-such-host.invalid:1"]})
    g0 = m.generation
    asyncio.run(m.refresh_dns())
    assert "127.0.0.1:7000" in m.addresses("rollout") and m.generation == g0 + 1
    assert m.view("rollout", "127.0.0.1:7000").source == "dns"
    assert m.addresses("reward") == []
    asyncio.run(m.refresh_dns())
    assert m.generation == g0 + 1  # same answer: nothing to apply
    assert asyncio.run(resolve_dns("dns:///no-such-host.invalid:1")) == []


def test_registrations_long_gone_are_forgotten():
    clock = Clock()
    m = Membership({"rollout": ["a:1"]}, clock=clock)
    m.register("rollout", "b:2", lease_s=10)
    m.register("rollout", "b:2", leaving=True)
    clock.t += 10 + 599
    assert [v.address for v in m.members() if v.role == "rollout"] == ["a:1", "b:2"]
    clock.t += 2
    assert [v.address for v in m.members() if v.role == "rollout"] == ["a:1"]


def test_registrations_are_bounded_in_size_and_number():
    m = Membership({})
    with pytest.raises(InvalidArgument, match="at most 255 characters") as err:
        m.register("rollout", "h" * 300 + ":1")
    assert err.value.field == "address"
    with pytest.raises(InvalidArgument, match="host:port") as err:
        m.register("rollout", "a:1", metrics_address="no-port")
    assert err.value.field == "metrics_address"
    for i in range(256):
        m.register("reward", f"10.0.{i // 200}.{i % 200}:1")
    with pytest.raises(InvalidArgument, match="reward already has 256 live registrations"):
        m.register("reward", "10.9.9.9:1")
    m.register("reward", "10.0.0.0:1")  # a renewal is always taken
    m.register("rollout", "10.9.9.9:1")  # the bound is per role


def test_leaving_an_address_nobody_registered_records_nothing():
    m = Membership({"rollout": ["a:1"]})
    for i in range(1000):
        m.register("rollout", f"10.1.{i // 250}.{i % 250}:1", leaving=True)
    assert m.leaving == {} and [v.address for v in m.members() if v.role == "rollout"] == ["a:1"]
