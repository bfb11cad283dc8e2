"""Tensor <-> ``alignmesh.common.v1.Tensor`` (raw bytes + dtype + shape)."""

from __future__ import annotations

import numpy as np
import torch

from alignmesh.protos.common.v1 import tensor_pb2
from alignmesh.services.common.errors import InvalidArgument

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _NAMES:
        raise ValueError(f"dtype {dtype} cannot travel as a Tensor message")
    return _NAMES[dtype]


def dtype_from_name(name: str, field: str = "dtype") -> torch.dtype:
    if name not in _DTYPES:
        raise InvalidArgument(field, f"unknown dtype {name!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def encode(tensor: torch.Tensor) -> tensor_pb2.Tensor:
    """Encode a tensor as raw bytes (C order, little endian)."""
    t = tensor.detach().to("cpu").contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool and t.numel() else t
    data = raw.numpy().tobytes() if t.numel() else b""
    return tensor_pb2.Tensor(dtype=dtype_name(t.dtype), shape=list(t.shape), data=data)


def decode(msg: tensor_pb2.Tensor, field: str, dtype: torch.dtype | None = None,
           ndim: int | None = None) -> torch.Tensor:
    """Decode a Tensor message, checking dtype, rank and byte count; errors name ``field``."""
    if not msg.dtype:
        raise InvalidArgument(field, "missing tensor (dtype is empty)")
    got = dtype_from_name(msg.dtype, f"{field}.dtype")
    if dtype is not None and got != dtype:
        raise InvalidArgument(field, f"dtype must be {dtype_name(dtype)}, got {msg.dtype}")
    shape = tuple(int(s) for s in msg.shape)
    if ndim is not None and len(shape) != ndim:
        raise InvalidArgument(field, f"must have {ndim} dimensions, got shape {list(shape)}")
    if any(s < 0 for s in shape):
        raise InvalidArgument(field, f"negative size in shape {list(shape)}")
    numel = int(np.prod(shape)) if shape else 1
    itemsize = torch.empty((), dtype=got).element_size()
    if len(msg.data) != numel * itemsize:
        raise InvalidArgument(field, f"holds {len(msg.data)} bytes, shape {list(shape)} of {msg.dtype} "
                                     f"needs {numel * itemsize}")
    if numel == 0:
        return torch.empty(shape, dtype=got)
    buf = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)
    return buf.view(got).reshape(shape)


def check_width(ids: torch.Tensor, context: int, field: str = "input_ids") -> None:
    """Sequences no longer than the model's context (``context`` 0: the model does not say)."""
    if context and ids.dim() == 2 and ids.shape[1] > context:
        raise InvalidArgument(field, f"sequences of {ids.shape[1]} tokens exceed the model's context of {context}")
