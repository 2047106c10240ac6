from receiver.api.gen import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_KIND_UNSPECIFIED: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_NORMAL: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_SUPPRESS: _ClassVar[FeedbackKind]
FEEDBACK_KIND_UNSPECIFIED: FeedbackKind
FEEDBACK_KIND_NORMAL: FeedbackKind
FEEDBACK_KIND_SUPPRESS: FeedbackKind

class Feedback(_message.Message):
    __slots__ = ("id", "kind", "source_uid", "service", "created_unix_nano", "expires_unix_nano", "by", "reason", "authenticated_as", "model_version", "radius", "include_lookalikes", "reference_rows", "revoked", "revoked_unix_nano", "revoked_by", "revoke_reason", "active", "row")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATED_AS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOOKALIKES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKE_REASON_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: FeedbackKind
    source_uid: str
    service: str
    created_unix_nano: int
    expires_unix_nano: int
    by: str
    reason: str
    authenticated_as: str
    model_version: str
    radius: float
    include_lookalikes: bool
    reference_rows: int
    revoked: bool
    revoked_unix_nano: int
    revoked_by: str
    revoke_reason: str
    active: bool
    row: _common_pb2.Row
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[FeedbackKind, str]] = ..., source_uid: _Optional[str] = ..., service: _Optional[str] = ..., created_unix_nano: _Optional[int] = ..., expires_unix_nano: _Optional[int] = ..., by: _Optional[str] = ..., reason: _Optional[str] = ..., authenticated_as: _Optional[str] = ..., model_version: _Optional[str] = ..., radius: _Optional[float] = ..., include_lookalikes: _Optional[bool] = ..., reference_rows: _Optional[int] = ..., revoked: _Optional[bool] = ..., revoked_unix_nano: _Optional[int] = ..., revoked_by: _Optional[str] = ..., revoke_reason: _Optional[str] = ..., active: _Optional[bool] = ..., row: _Optional[_Union[_common_pb2.Row, _Mapping]] = ...) -> None: ...

class MarkNormalRequest(_message.Message):
    __slots__ = ("uid", "include_lookalikes", "service", "ttl_seconds", "by", "reason", "radius")
    UID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOOKALIKES_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    uid: str
    include_lookalikes: bool
    service: str
    ttl_seconds: int
    by: str
    reason: str
    radius: float
    def __init__(self, uid: _Optional[str] = ..., include_lookalikes: _Optional[bool] = ..., service: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., by: _Optional[str] = ..., reason: _Optional[str] = ..., radius: _Optional[float] = ...) -> None: ...

class MarkNormalResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...

class SuppressRequest(_message.Message):
    __slots__ = ("uid", "service", "ttl_seconds", "by", "reason", "radius")
    UID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    uid: str
    service: str
    ttl_seconds: int
    by: str
    reason: str
    radius: float
    def __init__(self, uid: _Optional[str] = ..., service: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., by: _Optional[str] = ..., reason: _Optional[str] = ..., radius: _Optional[float] = ...) -> None: ...

class SuppressResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...

class ListFeedbackRequest(_message.Message):
    __slots__ = ("include_inactive", "service", "kind")
    INCLUDE_INACTIVE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    include_inactive: bool
    service: str
    kind: FeedbackKind
    def __init__(self, include_inactive: _Optional[bool] = ..., service: _Optional[str] = ..., kind: _Optional[_Union[FeedbackKind, str]] = ...) -> None: ...

class ListFeedbackResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: _containers.RepeatedCompositeFieldContainer[Feedback]
    def __init__(self, feedback: _Optional[_Iterable[_Union[Feedback, _Mapping]]] = ...) -> None: ...

class RevokeFeedbackRequest(_message.Message):
    __slots__ = ("id", "by", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    by: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., by: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeFeedbackResponse(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: Feedback
    def __init__(self, feedback: _Optional[_Union[Feedback, _Mapping]] = ...) -> None: ...
