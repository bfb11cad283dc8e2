"""How the roles are run: ``serve`` (one role in this process), the local cluster (every role as its own process
on loopback: ``alignmesh up`` / ``demo`` / ``run``), and the ``alignmesh`` command line. This layer sits above
``services`` and ``coordinator`` and may import both; nothing below imports it. The same folder holds the
container and cluster files (Dockerfile, docker-compose.yml, Prometheus and Grafana configs)."""
