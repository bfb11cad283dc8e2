"""bf16 through the services: a GRPO job on a cluster whose rollout and reference serve bf16 and whose trainer
computes in bf16 over fp32 master weights; the weight push carries half the bytes of fp32."""

from __future__ import annotations

import pytest

from alignmesh.clients.client import Client

from test_jobs import job, main_steps, start_cluster

pytestmark = pytest.mark.integration


def test_a_bf16_cluster_trains_and_pushes_half_the_bytes(tiny_model_dir, tmp_path):
    c = start_cluster(tmp_path, tiny_model_dir, rollout={"dtype": "bfloat16"}, reference={"dtype": "bfloat16"},
                      trainer={"dtype": "bfloat16"})
    try:
        with Client(c.coordinator_address()) as client:
            done = client.wait(client.submit(job(4), name="bf16").id, timeout_s=300)
            assert done.state == "succeeded", done.error
            steps = main_steps(client, done.id)
    finally:
        c.stop()
    pushed = {m["sync_bytes"] for m in steps.values() if "sync_bytes" in m}
    assert pushed == {2_109_952 / 2}  # every floating-point weight as bf16
    assert all(m["samples"] == 32 for m in steps.values())
