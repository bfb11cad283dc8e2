"""The shipped compose stack, read as an operator would: nothing published beyond loopback, every role behind the
generated token, Grafana without a default password."""

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[3] / "deploy" / "docker-compose.yml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_every_published_port_is_on_loopback():
    published = [(name, p) for name, svc in services().items() for p in svc.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for _, p in published), published


def test_grafana_takes_its_admin_password_from_the_generated_secret():
    svcs = services()
    env = svcs["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/grafana-secret/admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env and env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "/grafana-secret/admin_password" in " ".join(svcs["token"]["command"])
    assert svcs["grafana"]["depends_on"]["token"]["condition"] == "service_completed_successfully"


def test_roles_need_the_token_before_they_start():
    for name, svc in services().items():
        if "alignmesh" in " ".join(svc.get("command", [])) and name != "token":
            assert svc["depends_on"]["token"]["condition"] == "service_completed_successfully", name
