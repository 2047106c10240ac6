from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldValue(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("uid", "signal", "time_unix_nano", "service", "class_uid", "activity_id", "severity_id", "status_id", "fields", "trace_id", "span_id")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FieldValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FieldValue, _Mapping]] = ...) -> None: ...
    UID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    uid: str
    signal: str
    time_unix_nano: int
    service: str
    class_uid: int
    activity_id: int
    severity_id: int
    status_id: int
    fields: _containers.MessageMap[str, FieldValue]
    trace_id: str
    span_id: str
    def __init__(self, uid: _Optional[str] = ..., signal: _Optional[str] = ..., time_unix_nano: _Optional[int] = ..., service: _Optional[str] = ..., class_uid: _Optional[int] = ..., activity_id: _Optional[int] = ..., severity_id: _Optional[int] = ..., status_id: _Optional[int] = ..., fields: _Optional[_Mapping[str, FieldValue]] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ...) -> None: ...

class Neighbor(_message.Message):
    __slots__ = ("row", "distance", "score", "is_anomaly")
    ROW_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IS_ANOMALY_FIELD_NUMBER: _ClassVar[int]
    row: Row
    distance: float
    score: float
    is_anomaly: bool
    def __init__(self, row: _Optional[_Union[Row, _Mapping]] = ..., distance: _Optional[float] = ..., score: _Optional[float] = ..., is_anomaly: _Optional[bool] = ...) -> None: ...
