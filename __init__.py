"""alignmesh: LLM alignment training as a gRPC cluster of model roles.

The repository root is this package: ``alignmesh.protos``, ``alignmesh.services``, ``alignmesh.coordinator``
and ``alignmesh.clients`` are its top-level folders.
"""

__version__ = "0.1.0"

__all__ = ["Client", "errors", "__version__"]


def __getattr__(name: str):
    if name == "Client":
        from alignmesh.clients.client import Client

        return Client
    if name == "errors":
        from alignmesh.clients import errors

        return errors
    raise AttributeError(name)
