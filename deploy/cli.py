"""The ``alignmesh`` command line: the job verbs (``alignmesh.clients.cli``, client only) plus the server verbs
that start roles (``serve``, ``up``, ``down``, ``status``, ``demo``, ``run``, ``init-model``).

Importing this module needs only the client's dependencies; a server verb on an install without the server
extra says what to install instead of failing on a missing torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

from alignmesh.clients import cli as job_cli
from alignmesh.services.common.settings import ROLES, load_cluster_config

SERVER_MODULES = ("torch", "transformers", "grpc_health", "grpc_reflection", "prometheus_client")


def missing_server_modules() -> list[str]:
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def _serve(args) -> int:
    if args.parent_pid is not None:
        from alignmesh.deploy.local import die_with_parent

        die_with_parent(args.parent_pid)
    from alignmesh.deploy.serve import run

    run(args.role, load_cluster_config(args.config), args.port, args.metrics_port, args.host, args.insecure,
        args.register_with, args.advertise, args.port_file)
    return 0


def _up(args) -> int:
    from alignmesh.deploy.local import LocalCluster

    cluster = LocalCluster(load_cluster_config(args.config), detach=args.detach)
    t0 = time.time()
    cluster.start()
    print(f"cluster healthy in {time.time() - t0:.1f}s\n{cluster.table()}\ncoordinator: "
          f"{cluster.coordinator_address()}", flush=True)
    if args.detach:
        print("stop it with: alignmesh down")
        return 0
    from alignmesh.deploy.supervise import CrashLoop, Supervisor

    supervisor = Supervisor(cluster, max_restarts=args.max_restarts, backoff_s=args.restart_backoff,
                            say=lambda line: print(line, flush=True))
    try:
        supervisor.run()
    except CrashLoop as exc:
        print(f"alignmesh: error: {exc}; stopping the cluster", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


def _down(args) -> int:
    from alignmesh.deploy.local import down

    n = down(load_cluster_config(args.config).state_dir)
    print(f"stopped {n} processes" if n else "no local cluster is running")
    return 0


def _status(args) -> int:
    from alignmesh.clients.local_state import read_state
    from alignmesh.deploy.local import health_ok

    cfg = load_cluster_config(args.config)
    state = read_state(cfg.state_dir)
    if state is None:
        print("no local cluster is running")
        return 1
    rows = [{"role": m["role"], "replica": m["replica"], "address": f"{state['host']}:{m['port']}",
             "serving": health_ok(f"{state['host']}:{m['port']}", security=cfg.security)} for m in state["members"]]
    if args.output != "table":
        job_cli._dump({"state_dir": str(cfg.state_dir), "members": rows}, args.output)
    else:
        for r in rows:
            print(f"{r['role']:<12} {r['replica']:<3} {r['address']:<21} {'SERVING' if r['serving'] else 'NOT SERVING'}")
    return 0 if all(r["serving"] for r in rows) else 1


def _demo(args) -> int:
    from alignmesh.deploy.demo import run_demo

    return run_demo(args.config, args.job_config, args.out)


def _init_model(args) -> int:
    from alignmesh.services.models.tiny import create_model_dir

    print(create_model_dir(args.path, seed=args.seed))
    return 0


def add_server_verbs(sub) -> None:
    s = job_cli.verb_parser(sub, "serve", "serve one role in this process",
                            "alignmesh serve rollout --config cluster.yaml --port 50061 --metrics-port 9101")
    s.add_argument("role", choices=ROLES)
    s.add_argument("--config", help="cluster YAML")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--metrics-port", type=int, default=0)
    s.add_argument("--host", default=None, help="address to listen on (default: the config's host)")
    s.add_argument("--register-with", default=None, metavar="HOST:PORT",
                   help="rollout/reward/reference: register with this coordinator once serving (renewed; "
                        "'leaving' on SIGTERM), for replicas no endpoints list knows in advance")
    s.add_argument("--port-file", default=None, metavar="PATH",
                   help="write host:port here once listening (with --port 0: for health checks)")
    s.add_argument("--advertise", default=None, metavar="HOST",
                   help="with --register-with: the host others reach this replica at (default: --host, or this "
                        "machine's name when listening on every interface)")
    s.add_argument("--insecure", action="store_true",
                   help="listen beyond loopback without authentication (only on a network you trust)")
    s.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="stop (SIGTERM) when this process, the launcher, dies (Linux; `alignmesh up` passes it)")
    s.set_defaults(fn=_serve, server=True)
    for name, fn, helptext, example in (
            ("up", _up, "start a local cluster", "alignmesh up examples/cluster_local.yaml --detach"),
            ("down", _down, "stop the local cluster", "alignmesh down"),
            ("status", _status, "health of the local cluster", "alignmesh status -o json")):
        s = job_cli.verb_parser(sub, name, helptext, example)
        s.add_argument("config", nargs="?", help="cluster YAML (default: built-in defaults)")
        if name == "up":
            s.add_argument("--detach", action="store_true", help="return once healthy; stop with `alignmesh down` "
                                                                 "(no supervision then)")
            s.add_argument("--max-restarts", type=int, default=5,
                           help="restarts of one member within 5 minutes before giving up (a crash loop)")
            s.add_argument("--restart-backoff", type=float, default=1.0,
                           help="seconds before the first restart of a member; doubles each time, at most 30")
        if name == "status":
            s.add_argument("--output", "-o", choices=("table", "json", "yaml"), default="table",
                           help="table for people, json or yaml for scripts")
        s.set_defaults(fn=fn, server=name != "down")
    s = job_cli.verb_parser(sub, "demo", "GRPO on the embedded task through a local cluster, with a before/after "
                                         "table", "alignmesh demo --out runs")
    s.add_argument("--config", default=None, help="cluster YAML (default: 2 rollout replicas)")
    s.add_argument("--job-config", default=None, help="job YAML (default: examples/grpo_addition.yaml)")
    s.add_argument("--out", default="runs", help="where run directories go")
    s.set_defaults(fn=_demo, server=True)
    s = job_cli.verb_parser(sub, "run", "start a local cluster, run one job config to the end, print before/after",
                            "alignmesh run examples/rloo_addition.yaml")
    s.add_argument("job_config")
    s.add_argument("--config", default=None, help="cluster YAML (default: 2 rollout replicas, a critic if needed)")
    s.add_argument("--out", default="runs", help="where run directories go")
    s.set_defaults(fn=lambda a: _demo(argparse.Namespace(config=a.config, job_config=a.job_config, out=a.out)),
                   server=True)
    s = job_cli.verb_parser(sub, "init-model", "write the embedded default model to a directory",
                            "alignmesh init-model models/tiny")
    s.add_argument("path")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_init_model, server=True)


def _validate(args) -> int:
    """``alignmesh validate``: YAML and schema (as the client does), and with the server side installed the
    params of a built-in algorithm too."""
    try:
        from alignmesh.coordinator.flows.registry import FLOWS
    except ImportError:  # a client-only install
        return job_cli._validate(args)
    from alignmesh.services.common.config import from_dict
    from alignmesh.services.common.errors import ConfigError

    _, cfg = job_cli._read_job(args.job_config)
    if cfg.algorithm not in FLOWS:
        print(f"{args.job_config}: valid (YAML, schema); the params of {cfg.algorithm!r} are checked by the "
              f"coordinator that may load it")
        return 0
    try:
        from_dict(FLOWS.get(cfg.algorithm).Params, cfg.params, "params")
    except ConfigError as exc:
        raise job_cli.BadConfig(f"{args.job_config}: {exc}") from None
    print(f"{args.job_config}: valid (YAML, schema, {cfg.algorithm} params)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignmesh", description="LLM alignment training as a gRPC cluster of roles")
    sub = p.add_subparsers(dest="cmd", required=True)
    job_cli.add_job_verbs(sub)
    sub.choices["validate"].set_defaults(fn=_validate)
    add_server_verbs(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    missing = missing_server_modules() if getattr(args, "server", False) else []
    if missing:
        print(f"alignmesh: error: `{args.cmd}` runs the server side, which is not installed here (missing: "
              f"{', '.join(missing)}); install it with: pip install 'alignmesh[server]' (CPU: pip install "
              f"torch==2.13.0 first)", file=sys.stderr)
        return 2
    return job_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
