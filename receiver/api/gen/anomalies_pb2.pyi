from receiver.api.gen import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Anomaly(_message.Message):
    __slots__ = ("uid", "source_uid", "signal", "service", "time_unix_nano", "detected_unix_nano", "score", "threshold", "detector", "model_version", "explanation", "neighbor_uids", "trace_id", "span_id", "p_value", "suppressed_by")
    UID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_UID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    DETECTED_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOR_UIDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_BY_FIELD_NUMBER: _ClassVar[int]
    uid: str
    source_uid: str
    signal: str
    service: str
    time_unix_nano: int
    detected_unix_nano: int
    score: float
    threshold: float
    detector: str
    model_version: str
    explanation: str
    neighbor_uids: _containers.RepeatedScalarFieldContainer[str]
    trace_id: str
    span_id: str
    p_value: float
    suppressed_by: str
    def __init__(self, uid: _Optional[str] = ..., source_uid: _Optional[str] = ..., signal: _Optional[str] = ..., service: _Optional[str] = ..., time_unix_nano: _Optional[int] = ..., detected_unix_nano: _Optional[int] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., detector: _Optional[str] = ..., model_version: _Optional[str] = ..., explanation: _Optional[str] = ..., neighbor_uids: _Optional[_Iterable[str]] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., p_value: _Optional[float] = ..., suppressed_by: _Optional[str] = ...) -> None: ...

class ListAnomaliesRequest(_message.Message):
    __slots__ = ("start_unix_nano", "end_unix_nano", "service", "signal", "min_score", "detector", "page_size", "page_token", "include_suppressed")
    START_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    start_unix_nano: int
    end_unix_nano: int
    service: str
    signal: str
    min_score: float
    detector: str
    page_size: int
    page_token: str
    include_suppressed: bool
    def __init__(self, start_unix_nano: _Optional[int] = ..., end_unix_nano: _Optional[int] = ..., service: _Optional[str] = ..., signal: _Optional[str] = ..., min_score: _Optional[float] = ..., detector: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_suppressed: _Optional[bool] = ...) -> None: ...

class ListAnomaliesResponse(_message.Message):
    __slots__ = ("anomalies", "next_page_token")
    ANOMALIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    anomalies: _containers.RepeatedCompositeFieldContainer[Anomaly]
    next_page_token: str
    def __init__(self, anomalies: _Optional[_Iterable[_Union[Anomaly, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetAnomalyRequest(_message.Message):
    __slots__ = ("uid", "neighbors")
    UID_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    uid: str
    neighbors: int
    def __init__(self, uid: _Optional[str] = ..., neighbors: _Optional[int] = ...) -> None: ...

class FeatureDelta(_message.Message):
    __slots__ = ("feature", "observed", "typical")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_FIELD_NUMBER: _ClassVar[int]
    feature: str
    observed: str
    typical: str
    def __init__(self, feature: _Optional[str] = ..., observed: _Optional[str] = ..., typical: _Optional[str] = ...) -> None: ...

class GetAnomalyResponse(_message.Message):
    __slots__ = ("anomaly", "row", "neighbors", "deltas", "model_version")
    ANOMALY_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    anomaly: Anomaly
    row: _common_pb2.Row
    neighbors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Neighbor]
    deltas: _containers.RepeatedCompositeFieldContainer[FeatureDelta]
    model_version: str
    def __init__(self, anomaly: _Optional[_Union[Anomaly, _Mapping]] = ..., row: _Optional[_Union[_common_pb2.Row, _Mapping]] = ..., neighbors: _Optional[_Iterable[_Union[_common_pb2.Neighbor, _Mapping]]] = ..., deltas: _Optional[_Iterable[_Union[FeatureDelta, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SimilarEventsRequest(_message.Message):
    __slots__ = ("uid", "example", "limit", "service", "anomalies_only")
    UID_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ANOMALIES_ONLY_FIELD_NUMBER: _ClassVar[int]
    uid: str
    example: _common_pb2.Row
    limit: int
    service: str
    anomalies_only: bool
    def __init__(self, uid: _Optional[str] = ..., example: _Optional[_Union[_common_pb2.Row, _Mapping]] = ..., limit: _Optional[int] = ..., service: _Optional[str] = ..., anomalies_only: _Optional[bool] = ...) -> None: ...

class SimilarEventsResponse(_message.Message):
    __slots__ = ("events", "model_version")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Neighbor]
    model_version: str
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Neighbor, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
