from alignmesh.protos.common.v1 import tensor_pb2 as _tensor_pb2
from alignmesh.protos.common.v1 import memory_pb2 as _memory_pb2
from alignmesh.protos.common.v1 import weights_pb2 as _weights_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadWeightsRequest(_message.Message):
    __slots__ = ("path", "version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: int
    def __init__(self, path: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LogProbsRequest(_message.Message):
    __slots__ = ("input_ids", "attention_mask", "prompt_lengths")
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    input_ids: _tensor_pb2.Tensor
    attention_mask: _tensor_pb2.Tensor
    prompt_lengths: _tensor_pb2.Tensor
    def __init__(self, input_ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., prompt_lengths: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class LogProbsResponse(_message.Message):
    __slots__ = ("logprobs", "weight_version")
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    logprobs: _tensor_pb2.Tensor
    weight_version: int
    def __init__(self, logprobs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., weight_version: _Optional[int] = ...) -> None: ...
