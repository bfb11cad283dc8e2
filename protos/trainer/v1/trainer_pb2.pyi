from alignmesh.protos.common.v1 import tensor_pb2 as _tensor_pb2
from alignmesh.protos.common.v1 import memory_pb2 as _memory_pb2
from alignmesh.protos.common.v1 import weights_pb2 as _weights_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComputeValuesRequest(_message.Message):
    __slots__ = ("input_ids", "attention_mask")
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    input_ids: _tensor_pb2.Tensor
    attention_mask: _tensor_pb2.Tensor
    def __init__(self, input_ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class ComputeValuesResponse(_message.Message):
    __slots__ = ("values", "scores")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    values: _tensor_pb2.Tensor
    scores: _tensor_pb2.Tensor
    def __init__(self, values: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., scores: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class LossSpec(_message.Message):
    __slots__ = ("name", "clip_eps", "kl_coef", "epochs", "micro_batch_size", "beta", "variant", "label_smoothing", "params", "off_policy", "is_cap", "clip_eps_high")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLIP_EPS_FIELD_NUMBER: _ClassVar[int]
    KL_COEF_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    LABEL_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OFF_POLICY_FIELD_NUMBER: _ClassVar[int]
    IS_CAP_FIELD_NUMBER: _ClassVar[int]
    CLIP_EPS_HIGH_FIELD_NUMBER: _ClassVar[int]
    name: str
    clip_eps: float
    kl_coef: float
    epochs: int
    micro_batch_size: int
    beta: float
    variant: str
    label_smoothing: float
    params: _containers.ScalarMap[str, float]
    off_policy: str
    is_cap: float
    clip_eps_high: float
    def __init__(self, name: _Optional[str] = ..., clip_eps: _Optional[float] = ..., kl_coef: _Optional[float] = ..., epochs: _Optional[int] = ..., micro_batch_size: _Optional[int] = ..., beta: _Optional[float] = ..., variant: _Optional[str] = ..., label_smoothing: _Optional[float] = ..., params: _Optional[_Mapping[str, float]] = ..., off_policy: _Optional[str] = ..., is_cap: _Optional[float] = ..., clip_eps_high: _Optional[float] = ...) -> None: ...

class TrainStepRequest(_message.Message):
    __slots__ = ("input_ids", "attention_mask", "loss_mask", "advantages", "ref_logprobs", "loss", "learning_rate", "returns", "old_values", "request_id", "behavior_logprobs")
    INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    LOSS_MASK_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    REF_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    RETURNS_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOR_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    input_ids: _tensor_pb2.Tensor
    attention_mask: _tensor_pb2.Tensor
    loss_mask: _tensor_pb2.Tensor
    advantages: _tensor_pb2.Tensor
    ref_logprobs: _tensor_pb2.Tensor
    loss: LossSpec
    learning_rate: float
    returns: _tensor_pb2.Tensor
    old_values: _tensor_pb2.Tensor
    request_id: str
    behavior_logprobs: _tensor_pb2.Tensor
    def __init__(self, input_ids: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., loss_mask: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., advantages: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., ref_logprobs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., loss: _Optional[_Union[LossSpec, _Mapping]] = ..., learning_rate: _Optional[float] = ..., returns: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., old_values: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., request_id: _Optional[str] = ..., behavior_logprobs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class TrainStepResponse(_message.Message):
    __slots__ = ("step", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    step: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ("path", "export_hf", "request_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    EXPORT_HF_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    export_hf: bool
    request_id: str
    def __init__(self, path: _Optional[str] = ..., export_hf: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class LoadCheckpointRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("path", "step", "weight_version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    step: int
    weight_version: int
    def __init__(self, path: _Optional[str] = ..., step: _Optional[int] = ..., weight_version: _Optional[int] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainerState(_message.Message):
    __slots__ = ("step", "weight_version", "num_parameters", "device", "learning_rate")
    STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    step: int
    weight_version: int
    num_parameters: int
    device: str
    learning_rate: float
    def __init__(self, step: _Optional[int] = ..., weight_version: _Optional[int] = ..., num_parameters: _Optional[int] = ..., device: _Optional[str] = ..., learning_rate: _Optional[float] = ...) -> None: ...

class GetWeightManifestRequest(_message.Message):
    __slots__ = ("bucket_bytes", "dtype", "merged")
    BUCKET_BYTES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    bucket_bytes: int
    dtype: str
    merged: bool
    def __init__(self, bucket_bytes: _Optional[int] = ..., dtype: _Optional[str] = ..., merged: _Optional[bool] = ...) -> None: ...

class PublishWeightsRequest(_message.Message):
    __slots__ = ("group_id", "version", "bucket_bytes", "dtype", "merged")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BYTES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    version: int
    bucket_bytes: int
    dtype: str
    merged: bool
    def __init__(self, group_id: _Optional[str] = ..., version: _Optional[int] = ..., bucket_bytes: _Optional[int] = ..., dtype: _Optional[str] = ..., merged: _Optional[bool] = ...) -> None: ...

class PublishWeightsResponse(_message.Message):
    __slots__ = ("version", "bytes", "buckets", "seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    bytes: int
    buckets: int
    seconds: float
    def __init__(self, version: _Optional[int] = ..., bytes: _Optional[int] = ..., buckets: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
