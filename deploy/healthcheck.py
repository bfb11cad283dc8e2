"""``python -m alignmesh.deploy.healthcheck HOST:PORT [CLUSTER_YAML]``: exit 0 when the service reports SERVING
(over TLS when the cluster config turns it on). ``@PATH`` instead of HOST:PORT reads the address from the file a
service wrote with ``serve --port-file PATH``."""

from __future__ import annotations

import sys

from alignmesh.deploy.local import health_ok
from alignmesh.services.common.settings import load_cluster_config

if __name__ == "__main__":
    security = load_cluster_config(sys.argv[2]).security if len(sys.argv) > 2 else None
    target = sys.argv[1]
    if target.startswith("@"):
        try:
            target = open(target[1:]).read().strip()
        except OSError:
            sys.exit(1)  # not listening yet
    sys.exit(0 if health_ok(target, timeout=3.0, security=security) else 1)
