"""``python -m alignmesh.clients.healthcheck HOST:PORT``: exit 0 when the service reports SERVING."""

from __future__ import annotations

import sys

from alignmesh.clients.cluster import health_ok

if __name__ == "__main__":
    sys.exit(0 if health_ok(sys.argv[1], timeout=3.0) else 1)
