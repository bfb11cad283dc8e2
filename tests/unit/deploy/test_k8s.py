"""deploy/k8s: both overlays render with `kubectl kustomize`, every object validates against the Kubernetes schemas
(strict: no unknown fields), and the pieces fit: probes on grpc.health.v1, headless Services that select their
pods and carry the names the cluster config resolves, the token Secret mounted where the config reads it, GPUs
requested per role, the network policy, the autoscaler on the rollout Deployment."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from alignmesh.services.common.config import from_dict
from alignmesh.services.common.settings import ClusterConfig

K8S = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
VERSION = "1.32.0"


def render(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubectl)")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", ["cpu-demo", "gpu"])
def test_every_object_validates_against_the_schemas(overlay):
    kv = pytest.importorskip("kubernetes_validate")
    docs = render(overlay)
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Service", "Deployment", "StatefulSet", "NetworkPolicy",
                                         "HorizontalPodAutoscaler", "PersistentVolumeClaim"}
    for doc in docs:
        kv.validate(doc, VERSION, strict=True)  # raises ValidationError naming the field


@pytest.mark.parametrize("overlay", ["cpu-demo", "gpu"])
def test_the_pieces_fit(overlay):
    docs = render(overlay)
    (config_map,) = by_kind(docs, "ConfigMap").values()
    cluster = from_dict(ClusterConfig, yaml.safe_load(config_map["data"]["cluster.yaml"]), "")
    services = by_kind(docs, "Service")
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    assert set(workloads) == {"coordinator", "trainer", "rollout", "reference", "reward", "environment"}
    for role, w in workloads.items():
        pod = w["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == 50051, (role, probe)
        assert container["args"][:3] == ["alignmesh", "serve", role]
        assert container["image"] == f"alignmesh:{'cpu' if overlay == 'cpu-demo' else 'gpu'}"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9100"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        secret = next(v for v in pod["spec"]["volumes"] if v["name"] == "token")["secret"]["secretName"]
        assert secret == "alignmesh-token" and cluster.security.token_file.startswith(mounts["token"])
        headless = services[f"{role}-headless"]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    for role in ("rollout", "reference", "reward"):  # found by the headless Service's name
        assert cluster.endpoints[role] == [f"dns:///{role}-headless:50051"]
    assert cluster.endpoints["environment"] == ["environment-0.environment-headless:50051"]  # sticky: by name
    assert workloads["environment"]["spec"]["serviceName"] == "environment-headless"
    assert cluster.coordinator.store_host == "coordinator-0.coordinator-headless"
    assert workloads["coordinator"]["spec"]["serviceName"] == "coordinator-headless"
    assert cluster.coordinator.db.startswith("/db/")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["rollout"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rollout"
    assert hpa["spec"]["metrics"][0]["object"]["metric"]["name"] == "alignmesh_rollout_time_share"
    policy = by_kind(docs, "NetworkPolicy")["alignmesh-members"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "alignmesh"}
    gpus = {role: w["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
            .get("nvidia.com/gpu", 0) for role, w in workloads.items()}
    if overlay == "gpu":
        assert gpus == {"trainer": cluster.trainer.processes, "rollout": 1, "reference": 1, "reward": 0,
                        "coordinator": 0, "environment": 0}
    else:
        assert not any(gpus.values()) and cluster.trainer.device == "cpu"


def test_the_rollout_time_share_the_autoscaler_reads_is_exported_by_the_coordinator():
    from alignmesh.coordinator import metrics

    assert metrics.ROLLOUT_SHARE._name == "alignmesh_rollout_time_share"
