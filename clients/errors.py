"""The Python client's exceptions (``alignmesh.errors``): one class per kind of failure a caller handles
differently. Each keeps the gRPC status (``.status``, ``.code()``, ``.details()``) and is a ``grpc.RpcError``, so code
that catches gRPC errors keeps working.

    try:
        client.submit("job.yaml")
    except alignmesh.errors.InvalidConfig as exc:   # fix the config: exc.details() names the field
        ...
    except alignmesh.errors.Unreachable:            # nothing answers: start or point at a cluster
        ...
"""

from __future__ import annotations

import grpc


class AlignmeshError(grpc.RpcError):
    """A call the coordinator (or the network) refused. ``status``: the gRPC status code."""

    def __init__(self, status: grpc.StatusCode, details: str, address: str = ""):
        super().__init__(f"{status.name}: {details}")
        self.status, self._details, self.address = status, details, address

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self._details

    def __str__(self) -> str:
        return f"{self.status.name}: {self._details}"


class InvalidConfig(AlignmeshError):
    """INVALID_ARGUMENT: a job config or knob the coordinator refused; ``details()`` names the field and the fix."""


class Unreachable(AlignmeshError):
    """UNAVAILABLE or DEADLINE_EXCEEDED: nothing answers at the address (or not in time)."""


class Refused(AlignmeshError):
    """UNAUTHENTICATED or PERMISSION_DENIED: credentials missing or wrong, or a path/code the cluster does not allow."""


class NotFound(AlignmeshError):
    """NOT_FOUND: no such job."""


class Conflict(AlignmeshError):
    """FAILED_PRECONDITION: the job is not in a state that allows the call (e.g. cancelling a finished job)."""


class JobFailed(AlignmeshError, RuntimeError):
    """``Client.wait``: the job ended in state failed; ``details()`` is its error."""

    def __init__(self, job_id: str, error: str):
        super().__init__(grpc.StatusCode.ABORTED, f"job {job_id} failed: {error}")
        self.job_id, self.error = job_id, error


KINDS = {grpc.StatusCode.INVALID_ARGUMENT: InvalidConfig, grpc.StatusCode.OUT_OF_RANGE: InvalidConfig,
         grpc.StatusCode.UNAVAILABLE: Unreachable, grpc.StatusCode.DEADLINE_EXCEEDED: Unreachable,
         grpc.StatusCode.UNAUTHENTICATED: Refused, grpc.StatusCode.PERMISSION_DENIED: Refused,
         grpc.StatusCode.NOT_FOUND: NotFound, grpc.StatusCode.FAILED_PRECONDITION: Conflict}


def typed(exc: grpc.RpcError, address: str = "") -> AlignmeshError:
    """The typed exception for a gRPC failure (``AlignmeshError`` itself for the other codes)."""
    if isinstance(exc, AlignmeshError):
        return exc
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    return KINDS.get(code, AlignmeshError)(code, details, address)


__all__ = ["AlignmeshError", "InvalidConfig", "Unreachable", "Refused", "NotFound", "Conflict", "JobFailed", "typed"]
