"""The job verbs of the ``alignmesh`` command line: ``submit``, ``jobs``, ``watch``, ``logs``, ``cancel``,
``pause``, ``resume``, ``update``. They need only the Python client (grpcio, protobuf, pyyaml): no torch.

The launcher (``alignmesh.deploy.cli``) adds the server verbs (``serve``, ``up``, ``down``, ``status``, ``demo``,
``run``) to the same parser; ``python -m alignmesh.clients.cli`` is the job verbs alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from alignmesh.clients.local_state import DEFAULT_COORDINATOR
from alignmesh.clients.profile import ADDRESS_ENV, CONFIG_ENV, TOKEN_ENV, config_path, resolve
from alignmesh.services.common.errors import AlignmeshError, ConfigError


def _client(args):
    from alignmesh.clients.client import Client

    profile = resolve(args.coordinator, args.token, args.tls_ca, args.tls_cert, args.tls_key)
    args.address, args.profile = profile.address, profile  # for error messages and `jobs`
    return Client(profile.address, token=profile.token, root_certificates=profile.tls_ca,
                  private_key=profile.tls_key, certificate_chain=profile.tls_cert)


def _read_job(path_text: str):
    """The job file's text and its config, checked here first: a missing file, YAML syntax (line and column) and
    the schema (unknown keys, types, values: the coordinator's own rules) fail before anything is sent."""
    from alignmesh.coordinator.config import parse_job_config

    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"job config {path}: no such file")
    text = path.read_text()
    try:
        return text, parse_job_config(text, str(path))
    except ConfigError as exc:
        raise BadConfig(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None


class BadConfig(ConfigError):
    """A job config that the schema refuses (exit code 3, as when the coordinator refuses it)."""


def _submit(args) -> int:
    text, _ = _read_job(args.job_config)
    with _client(args) as c:
        job = c.submit(text, name=args.name)
        print(job.id)
        if args.watch:
            from alignmesh.clients.progress import print_events, total_steps

            print_events(c.watch(job.id), total=total_steps(job.config_yaml))
            return 0 if c.get(job.id).state == "succeeded" else 1
    return 0


def _validate(args) -> int:
    """Offline: YAML and the schema. ``alignmesh validate`` on a server install also checks the params
    (``alignmesh.deploy.cli``: the flows live with the server)."""
    _read_job(args.job_config)
    print(f"{args.job_config}: valid (YAML, schema); params not checked here (install alignmesh[server] to check "
          f"them offline)")
    return 0


def _jobs(args) -> int:
    with _client(args) as c:
        jobs = c.list()
    print(args.profile.describe(), file=sys.stderr)  # stderr: the table (or JSON) on stdout stays clean for scripts
    if args.output != "table":
        return _dump([dataclasses.asdict(j) for j in jobs], args.output)
    for j in jobs:  # a failed job's reason in one line; `alignmesh logs JOB` has the whole error
        reason = (j.error.strip().splitlines() or [""])[0]
        reason = reason if len(reason) <= 80 else reason[:77] + "..."
        print(f"{j.id}  {j.name:<12} {j.state:<10} step {j.step:<6} {reason}".rstrip())
    return 0


def _dump(data, output: str) -> int:
    """Machine-readable output: ``json`` or ``yaml``."""
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _watch(args) -> int:
    from alignmesh.clients.progress import print_events, total_steps

    with _client(args) as c:
        if args.output == "json":  # every event as one JSON line, as it happens
            for ev in c.watch(args.job_id):
                print(json.dumps(dataclasses.asdict(ev)), flush=True)
            return 0 if c.get(args.job_id).state == "succeeded" else 1
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
        for ev in c.watch(args.job_id) if args.follow else c.events(args.job_id):
            if args.output == "json":  # every event, one JSON object per line
                print(json.dumps(dataclasses.asdict(ev)), flush=True)
            elif ev.kind in ("log", "state", "update", "checkpoint"):
                print(f"{ev.seq:6d} {ev.kind:<10} {ev.state or ''} {ev.message}".rstrip())
    return 0


def _scale(args) -> int:
    """``scale role=N ...`` asks for replica counts; with none, prints the members and the counts asked for."""
    counts = {}
    for item in args.counts:
        role, _, value = item.partition("=")
        if not value.isdigit():
            raise ConfigError(f"{item!r}: write role=count, e.g. rollout=3 (roles: rollout, reward, reference)")
        counts[role] = int(value)
    with _client(args) as c:
        for role, n in counts.items():
            c.scale(role, n)
            print(f"{role}: {n} replicas asked")
        members, desired = c.members()
    if not counts:
        rows = [("role", "address", "source", "state")] + [(m.role, m.address, m.source, m.state) for m in members]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows))
        for role, n in sorted(desired.items()):
            print(f"{role}: {n} replicas asked")
    return 0


JOB_VERBS = (
    ("submit", _submit, "submit a job config (YAML) to the coordinator",
     "alignmesh submit examples/grpo_addition.yaml --name first --watch"),
    ("validate", _validate, "check a job config offline (YAML, schema, and params with the server installed)",
     "alignmesh validate examples/grpo_addition.yaml"),
    ("jobs", _jobs, "list jobs", "alignmesh jobs -o json | jq '.[] | select(.state == \"failed\")'"),
    ("watch", _watch, "stream a job's progress until it ends", "alignmesh watch 3f2a9c1b07de"),
    ("logs", _logs, "a job's log, state and checkpoint events", "alignmesh logs 3f2a9c1b07de --follow"),
    ("cancel", _cancel, "cancel a job", "alignmesh cancel 3f2a9c1b07de"),
    ("pause", _pause, "pause a job after its current step", "alignmesh pause 3f2a9c1b07de"),
    ("resume", _resume, "resume a paused job", "alignmesh resume 3f2a9c1b07de"),
    ("update", _update, "change a running job's live knobs (name=value)",
     "alignmesh update 3f2a9c1b07de learning_rate=5e-5 temperature=0.8"),
    ("scale", _scale, "ask for rollout/reward/reference replica counts (role=N); none: list the replicas",
     "alignmesh scale rollout=3"),
)


CONFIG_HELP = f"""the coordinator and credentials come from flags, then ${ADDRESS_ENV}/${TOKEN_ENV}, then the client
config file ({config_path()}, or ${CONFIG_ENV}), e.g.:
  coordinator: rl-cluster.internal:50051
  token_file: ~/.config/alignmesh/token
  tls_ca: ~/.config/alignmesh/ca.pem"""


def verb_parser(sub, name: str, helptext: str, example: str):
    """A subcommand whose ``--help`` ends with an example."""
    return sub.add_parser(name, help=helptext, description=helptext, epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_job_verbs(sub) -> None:
    for name, fn, helptext, example in JOB_VERBS:
        s = verb_parser(sub, name, helptext, example)
        s.add_argument("--coordinator", default=None,
                       help=f"host:port (default: ${ADDRESS_ENV}, else `coordinator:` in the client config file, else "
                            f"the local cluster from `alignmesh up`, else {DEFAULT_COORDINATOR})")
        s.add_argument("--token", default=None, help=f"bearer token of the cluster (default: ${TOKEN_ENV}, else `token_file:` in the client "
                            "config file)")
        s.add_argument("--tls-ca", default=None, help="CA certificate: talk TLS to the coordinator (default: `tls_ca:` in the client config file)")
        s.add_argument("--tls-cert", default=None, help="client certificate (when the cluster requires one)")
        s.add_argument("--tls-key", default=None, help="client private key (with --tls-cert)")
        s.add_argument("--debug", action="store_true", help="show the traceback of a failure")
        if name == "jobs":
            s.add_argument("--output", "-o", choices=("table", "json", "yaml"), default="table",
                           help="table for people, json or yaml for scripts")
        if name in ("logs", "watch"):
            s.add_argument("--output", "-o", choices=("text", "json"), default="text",
                           help="json: every event as one JSON object per line")
        if name == "validate":
            s.add_argument("job_config", help="job YAML file")
        if name == "submit":
            s.add_argument("job_config", help="job YAML file")
            s.add_argument("--name", default="")
            s.add_argument("--watch", action="store_true", help="then stream its progress until it ends")
        elif name in ("watch", "cancel", "pause", "resume", "logs"):
            s.add_argument("job_id")
            if name == "logs":
                s.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        elif name == "scale":
            s.add_argument("counts", nargs="*", help="role=count, e.g. rollout=3 reward=2")
        elif name == "update":
            s.add_argument("job_id")
            s.add_argument("knobs", nargs="+", help="name=value, e.g. learning_rate=5e-5 temperature=0.8")
        s.set_defaults(fn=fn)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignmesh", description="drive alignment-training jobs on an alignmesh cluster",
                                epilog=CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_verbs(p.add_subparsers(dest="cmd", required=True))
    return p


# Exit codes: 0 done, 1 the job failed, 2 usage (argparse) or a local error, 3 a config the coordinator refused,
# 4 nothing answers at the address, 5 refused (authentication or permission), 6 no such job.
EXIT_BAD_CONFIG, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NOT_FOUND = 3, 4, 5, 6


def _rpc_error(args, exc) -> tuple[str, int]:
    """One line and an exit code for a gRPC failure (the status and its details, never a traceback)."""
    import grpc

    code, details = exc.code(), (exc.details() or "").strip().splitlines()
    details = details[0] if details else ""
    address = getattr(args, "address", "the coordinator")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and "job database" not in details:
        return (f"nothing answers at {address} ({code.name.lower()}); start a local cluster with `alignmesh up`, or "
                f"point at one with --coordinator HOST:PORT", EXIT_UNREACHABLE)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"{address} refused the call: {details} (credentials: --token, --tls-ca/--tls-cert/--tls-key or the client config file)", \
            EXIT_REFUSED
    if code == grpc.StatusCode.NOT_FOUND:
        return details, EXIT_NOT_FOUND
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return details, EXIT_BAD_CONFIG
    return f"{code.name}: {details}", 2


def run(args: argparse.Namespace) -> int:
    """Run a parsed verb; known failures become one line on stderr and an exit code (above); --debug: traceback."""
    import grpc

    try:
        return args.fn(args)
    except grpc.RpcError as exc:
        if getattr(args, "debug", False):
            raise
        line, code = _rpc_error(args, exc)
        print(f"alignmesh: error: {line}", file=sys.stderr)
        return code
    except BadConfig as exc:
        if getattr(args, "debug", False):
            raise
        print(f"alignmesh: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except (ConfigError, AlignmeshError, OSError, RuntimeError, TimeoutError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"alignmesh: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
