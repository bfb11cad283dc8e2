"""The ``alignmesh`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from alignmesh.services.common.errors import AlignmeshError, ConfigError
from alignmesh.services.common.settings import ROLES, load_cluster_config

DEFAULT_COORDINATOR = "127.0.0.1:50051"


def _serve(args) -> int:
    from alignmesh.services.main import run

    run(args.role, load_cluster_config(args.config), args.port, args.metrics_port, args.host)
    return 0


def _up(args) -> int:
    from alignmesh.clients.cluster import LocalCluster

    cluster = LocalCluster(load_cluster_config(args.config), detach=args.detach)
    t0 = time.time()
    cluster.start()
    print(f"cluster healthy in {time.time() - t0:.1f}s\n{cluster.table()}\ncoordinator: "
          f"{cluster.coordinator_address()}", flush=True)
    if args.detach:
        print("stop it with: alignmesh down")
        return 0
    try:
        while all(p.poll() is None for p in cluster._procs):
            time.sleep(0.5)
        print("a service exited; stopping the cluster", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


def _down(args) -> int:
    from alignmesh.clients.cluster import down

    n = down(load_cluster_config(args.config).state_dir)
    print(f"stopped {n} processes" if n else "no local cluster is running")
    return 0


def _status(args) -> int:
    from alignmesh.clients.cluster import health_ok, read_state

    cfg = load_cluster_config(args.config)
    state = read_state(cfg.state_dir)
    if state is None:
        print("no local cluster is running")
        return 1
    bad = 0
    for m in state["members"]:
        ok = health_ok(f"{state['host']}:{m['port']}", security=cfg.security)
        bad += not ok
        print(f"{m['role']:<12} {m['replica']:<3} {state['host']}:{m['port']:<6} "
              f"{'SERVING' if ok else 'NOT SERVING'}")
    return 1 if bad else 0


def _client(args):
    from alignmesh.clients.client import Client
    from alignmesh.clients.cluster import read_state

    address = args.coordinator
    if address is None:  # the local cluster started by `alignmesh up`, else the conventional port
        state = read_state(load_cluster_config(None).state_dir)
        members = [m for m in (state or {}).get("members", []) if m["role"] == "coordinator"]
        address = f"{state['host']}:{members[0]['port']}" if members else DEFAULT_COORDINATOR
    read = (lambda path: Path(path).read_bytes() if path else None)
    return Client(address, token=args.token, root_certificates=read(args.tls_ca),
                  private_key=read(args.tls_key), certificate_chain=read(args.tls_cert))


def _submit(args) -> int:
    with _client(args) as c:
        job = c.submit(args.job_config, name=args.name)
        print(job.id)
        if args.watch:
            from alignmesh.clients.progress import print_events, total_steps

            print_events(c.watch(job.id), total=total_steps(job.config_yaml))
            return 0 if c.get(job.id).state == "succeeded" else 1
    return 0


def _jobs(args) -> int:
    with _client(args) as c:
        for j in c.list():
            print(f"{j.id}  {j.name:<12} {j.state:<10} step {j.step:<6} {j.error}")
    return 0


def _watch(args) -> int:
    from alignmesh.clients.progress import print_events, total_steps

    with _client(args) as c:
        print_events(c.watch(args.job_id), total=total_steps(c.get(args.job_id).config_yaml))
        job = c.get(args.job_id)
    print(f"{job.id} {job.state} at step {job.step}: " + "  ".join(f"{k} {v:.4g}" for k, v in
                                                                   sorted(job.metrics.items())))
    return 0 if job.state == "succeeded" else 1


def _cancel(args) -> int:
    with _client(args) as c:
        print(c.cancel(args.job_id).state)
    return 0


def _pause(args) -> int:
    with _client(args) as c:
        print(c.pause(args.job_id).state)
    return 0


def _resume(args) -> int:
    with _client(args) as c:
        print(c.resume(args.job_id).state)
    return 0


def _update(args) -> int:
    knobs = {}
    for item in args.knobs:
        name, _, value = item.partition("=")
        try:
            knobs[name] = float(value)
        except ValueError:
            raise ConfigError(f"{item!r}: write knobs as name=number, e.g. learning_rate=1e-4") from None
    with _client(args) as c:
        print(c.update(args.job_id, **knobs).state)
    return 0


def _logs(args) -> int:
    with _client(args) as c:
        for ev in c.watch(args.job_id) if args.follow else _replay(c, args.job_id):
            if ev.kind in ("log", "state", "update", "checkpoint"):
                print(f"{ev.seq:6d} {ev.kind:<10} {ev.state or ''} {ev.message}".rstrip())
    return 0


def _replay(client, job_id: str):
    """Events so far, without waiting for the job to end."""
    return client.events(job_id)


def _demo(args) -> int:
    from alignmesh.clients.demo import run_demo

    return run_demo(args.config, args.job_config, args.out)


def _init_model(args) -> int:
    from alignmesh.services.models.tiny import create_model_dir

    print(create_model_dir(args.path, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignmesh", description="LLM alignment training as a gRPC cluster of roles")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve one role")
    s.add_argument("role", choices=ROLES)
    s.add_argument("--config", help="cluster YAML")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--metrics-port", type=int, default=0)
    s.add_argument("--host", default=None)
    s.set_defaults(fn=_serve)
    for name, fn, helptext in (("up", _up, "start a local cluster"), ("down", _down, "stop the local cluster"),
                               ("status", _status, "health of the local cluster")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("config", nargs="?", help="cluster YAML (default: built-in defaults)")
        if name == "up":
            s.add_argument("--detach", action="store_true", help="return once healthy; stop with `alignmesh down`")
        s.set_defaults(fn=fn)
    s = sub.add_parser("demo", help="GRPO on the embedded task through a local cluster, with a before/after table")
    s.add_argument("--config", default=None, help="cluster YAML (default: 2 rollout replicas)")
    s.add_argument("--job-config", default=None, help="job YAML (default: examples/grpo_addition.yaml)")
    s.add_argument("--out", default="runs", help="where run directories go")
    s.set_defaults(fn=_demo)
    for name, fn in (("submit", _submit), ("jobs", _jobs), ("watch", _watch), ("cancel", _cancel),
                     ("pause", _pause), ("resume", _resume), ("update", _update), ("logs", _logs)):
        s = sub.add_parser(name)
        s.add_argument("--coordinator", default=None,
                       help=f"host:port (default: the local cluster from `alignmesh up`, else {DEFAULT_COORDINATOR})")
        s.add_argument("--token", default=None, help="bearer token (security.token of the cluster)")
        s.add_argument("--tls-ca", default=None, help="CA certificate: talk TLS to the coordinator")
        s.add_argument("--tls-cert", default=None, help="client certificate (when the cluster requires one)")
        s.add_argument("--tls-key", default=None, help="client private key (with --tls-cert)")
        if name == "submit":
            s.add_argument("job_config")
            s.add_argument("--name", default="")
            s.add_argument("--watch", action="store_true")
        elif name in ("watch", "cancel", "pause", "resume", "logs"):
            s.add_argument("job_id")
            if name == "logs":
                s.add_argument("--follow", "-f", action="store_true")
        elif name == "update":
            s.add_argument("job_id")
            s.add_argument("knobs", nargs="+", help="name=value, e.g. learning_rate=5e-5 temperature=0.8")
        s.set_defaults(fn=fn)
    s = sub.add_parser("run", help="start a local cluster, run one job config to the end, print before/after")
    s.add_argument("job_config")
    s.add_argument("--config", default=None, help="cluster YAML (default: 2 rollout replicas, a critic if needed)")
    s.add_argument("--out", default="runs", help="where run directories go")
    s.set_defaults(fn=lambda a: _demo(argparse.Namespace(config=a.config, job_config=a.job_config, out=a.out)))
    s = sub.add_parser("init-model", help="write the embedded default model to a directory")
    s.add_argument("path")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_init_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, AlignmeshError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"alignmesh: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
