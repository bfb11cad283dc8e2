from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SleepRequest(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: int
    def __init__(self, level: _Optional[int] = ...) -> None: ...

class SleepResponse(_message.Message):
    __slots__ = ("bytes", "resident_before", "resident_after", "device_before", "device_after", "seconds")
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_AFTER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_AFTER_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    resident_before: int
    resident_after: int
    device_before: int
    device_after: int
    seconds: float
    def __init__(self, bytes: _Optional[int] = ..., resident_before: _Optional[int] = ..., resident_after: _Optional[int] = ..., device_before: _Optional[int] = ..., device_after: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class WakeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WakeResponse(_message.Message):
    __slots__ = ("bytes", "seconds")
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    seconds: float
    def __init__(self, bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
