import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompletionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPLETION_REASON_UNSPECIFIED: _ClassVar[CompletionReason]
    COMPLETION_REASON_IDLE: _ClassVar[CompletionReason]
    COMPLETION_REASON_RELEASED: _ClassVar[CompletionReason]
    COMPLETION_REASON_MAX_AGE: _ClassVar[CompletionReason]
    COMPLETION_REASON_HOLD_EXPIRED: _ClassVar[CompletionReason]

class SeriesStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERIES_STATUS_UNSPECIFIED: _ClassVar[SeriesStatus]
    SERIES_STATUS_RECEIVING: _ClassVar[SeriesStatus]
    SERIES_STATUS_COMPLETE: _ClassVar[SeriesStatus]

class SeriesEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERIES_EVENT_KIND_UNSPECIFIED: _ClassVar[SeriesEventKind]
    SERIES_EVENT_KIND_CREATED: _ClassVar[SeriesEventKind]
    SERIES_EVENT_KIND_INSTANCES_ADDED: _ClassVar[SeriesEventKind]
    SERIES_EVENT_KIND_COMPLETED: _ClassVar[SeriesEventKind]
    SERIES_EVENT_KIND_REOPENED: _ClassVar[SeriesEventKind]

class QueryLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_LEVEL_UNSPECIFIED: _ClassVar[QueryLevel]
    QUERY_LEVEL_PATIENT: _ClassVar[QueryLevel]
    QUERY_LEVEL_STUDY: _ClassVar[QueryLevel]
    QUERY_LEVEL_SERIES: _ClassVar[QueryLevel]
    QUERY_LEVEL_IMAGE: _ClassVar[QueryLevel]
COMPLETION_REASON_UNSPECIFIED: CompletionReason
COMPLETION_REASON_IDLE: CompletionReason
COMPLETION_REASON_RELEASED: CompletionReason
COMPLETION_REASON_MAX_AGE: CompletionReason
COMPLETION_REASON_HOLD_EXPIRED: CompletionReason
SERIES_STATUS_UNSPECIFIED: SeriesStatus
SERIES_STATUS_RECEIVING: SeriesStatus
SERIES_STATUS_COMPLETE: SeriesStatus
SERIES_EVENT_KIND_UNSPECIFIED: SeriesEventKind
SERIES_EVENT_KIND_CREATED: SeriesEventKind
SERIES_EVENT_KIND_INSTANCES_ADDED: SeriesEventKind
SERIES_EVENT_KIND_COMPLETED: SeriesEventKind
SERIES_EVENT_KIND_REOPENED: SeriesEventKind
QUERY_LEVEL_UNSPECIFIED: QueryLevel
QUERY_LEVEL_PATIENT: QueryLevel
QUERY_LEVEL_STUDY: QueryLevel
QUERY_LEVEL_SERIES: QueryLevel
QUERY_LEVEL_IMAGE: QueryLevel

class PatientAttributes(_message.Message):
    __slots__ = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUER_OF_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    PATIENT_BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    PATIENT_SEX_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    def __init__(self, patient_id: _Optional[str] = ..., issuer_of_patient_id: _Optional[str] = ..., patient_name: _Optional[str] = ..., patient_birth_date: _Optional[str] = ..., patient_sex: _Optional[str] = ...) -> None: ...

class StudyAttributes(_message.Message):
    __slots__ = ("study_instance_uid", "study_date", "study_time", "study_description", "accession_number", "study_id", "referring_physician_name")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FIELD_NUMBER: _ClassVar[int]
    STUDY_TIME_FIELD_NUMBER: _ClassVar[int]
    STUDY_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    REFERRING_PHYSICIAN_NAME_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    accession_number: str
    study_id: str
    referring_physician_name: str
    def __init__(self, study_instance_uid: _Optional[str] = ..., study_date: _Optional[str] = ..., study_time: _Optional[str] = ..., study_description: _Optional[str] = ..., accession_number: _Optional[str] = ..., study_id: _Optional[str] = ..., referring_physician_name: _Optional[str] = ...) -> None: ...

class SeriesAttributes(_message.Message):
    __slots__ = ("series_instance_uid", "modality", "series_number", "series_description", "body_part_examined", "manufacturer", "manufacturer_model_name", "station_name", "institution_name", "series_date", "series_time", "protocol_name")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SERIES_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SERIES_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_EXAMINED_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATION_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_NAME_FIELD_NUMBER: _ClassVar[int]
    SERIES_DATE_FIELD_NUMBER: _ClassVar[int]
    SERIES_TIME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_NAME_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    modality: str
    series_number: int
    series_description: str
    body_part_examined: str
    manufacturer: str
    manufacturer_model_name: str
    station_name: str
    institution_name: str
    series_date: str
    series_time: str
    protocol_name: str
    def __init__(self, series_instance_uid: _Optional[str] = ..., modality: _Optional[str] = ..., series_number: _Optional[int] = ..., series_description: _Optional[str] = ..., body_part_examined: _Optional[str] = ..., manufacturer: _Optional[str] = ..., manufacturer_model_name: _Optional[str] = ..., station_name: _Optional[str] = ..., institution_name: _Optional[str] = ..., series_date: _Optional[str] = ..., series_time: _Optional[str] = ..., protocol_name: _Optional[str] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("sop_instance_uid", "sop_class_uid", "instance_number", "transfer_syntax_uid", "size_bytes", "received_at", "slice_position")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_UID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SLICE_POSITION_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int
    transfer_syntax_uid: str
    size_bytes: int
    received_at: _timestamp_pb2.Timestamp
    slice_position: float
    def __init__(self, sop_instance_uid: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., instance_number: _Optional[int] = ..., transfer_syntax_uid: _Optional[str] = ..., size_bytes: _Optional[int] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., slice_position: _Optional[float] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("calling_ae_title", "called_ae_title", "receiver_id")
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    CALLED_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_ID_FIELD_NUMBER: _ClassVar[int]
    calling_ae_title: str
    called_ae_title: str
    receiver_id: str
    def __init__(self, calling_ae_title: _Optional[str] = ..., called_ae_title: _Optional[str] = ..., receiver_id: _Optional[str] = ...) -> None: ...

class SeriesUpdate(_message.Message):
    __slots__ = ("update_id", "patient", "study", "series", "instances", "source", "completion_reason", "representative_header_json", "text_decoding_fallbacks", "holding", "receiver_sequence", "representative_sop_instance_uid", "preview")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    STUDY_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_REASON_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVE_HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    TEXT_DECODING_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    HOLDING_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVE_SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    patient: PatientAttributes
    study: StudyAttributes
    series: SeriesAttributes
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    source: Source
    completion_reason: CompletionReason
    representative_header_json: str
    text_decoding_fallbacks: _containers.RepeatedScalarFieldContainer[str]
    holding: bool
    receiver_sequence: int
    representative_sop_instance_uid: str
    preview: SeriesPreview
    def __init__(self, update_id: _Optional[str] = ..., patient: _Optional[_Union[PatientAttributes, _Mapping]] = ..., study: _Optional[_Union[StudyAttributes, _Mapping]] = ..., series: _Optional[_Union[SeriesAttributes, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., source: _Optional[_Union[Source, _Mapping]] = ..., completion_reason: _Optional[_Union[CompletionReason, str]] = ..., representative_header_json: _Optional[str] = ..., text_decoding_fallbacks: _Optional[_Iterable[str]] = ..., holding: _Optional[bool] = ..., receiver_sequence: _Optional[int] = ..., representative_sop_instance_uid: _Optional[str] = ..., preview: _Optional[_Union[SeriesPreview, _Mapping]] = ...) -> None: ...

class SeriesAck(_message.Message):
    __slots__ = ("update_id", "ok", "num_instances", "status", "error", "hold_seconds")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    NUM_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    ok: bool
    num_instances: int
    status: SeriesStatus
    error: AckError
    hold_seconds: int
    def __init__(self, update_id: _Optional[str] = ..., ok: _Optional[bool] = ..., num_instances: _Optional[int] = ..., status: _Optional[_Union[SeriesStatus, str]] = ..., error: _Optional[_Union[AckError, _Mapping]] = ..., hold_seconds: _Optional[int] = ...) -> None: ...

class AckError(_message.Message):
    __slots__ = ("kind", "field", "message")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[AckError.Kind]
        KIND_INVALID: _ClassVar[AckError.Kind]
    KIND_UNSPECIFIED: AckError.Kind
    KIND_INVALID: AckError.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: AckError.Kind
    field: str
    message: str
    def __init__(self, kind: _Optional[_Union[AckError.Kind, str]] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("series_instance_uid", "study_instance_uid", "patient_id", "patient_name", "modality", "series_number", "series_description", "num_instances", "status", "first_received_at", "last_received_at", "study_date", "study_description", "accession_number", "body_part_examined", "manufacturer", "manufacturer_model_name", "station_name", "institution_name", "series_date", "protocol_name", "source_ae_title", "receiver_id", "completion_reason", "completed_at", "total_size_bytes", "text_decoding_fallbacks", "issuer_of_patient_id", "completion_version", "completion_detail", "representative_sop_instance_uid")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    SERIES_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SERIES_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NUM_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FIELD_NUMBER: _ClassVar[int]
    STUDY_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_EXAMINED_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATION_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_NAME_FIELD_NUMBER: _ClassVar[int]
    SERIES_DATE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_REASON_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEXT_DECODING_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    ISSUER_OF_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_DETAIL_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVE_SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    patient_name: str
    modality: str
    series_number: int
    series_description: str
    num_instances: int
    status: SeriesStatus
    first_received_at: _timestamp_pb2.Timestamp
    last_received_at: _timestamp_pb2.Timestamp
    study_date: str
    study_description: str
    accession_number: str
    body_part_examined: str
    manufacturer: str
    manufacturer_model_name: str
    station_name: str
    institution_name: str
    series_date: str
    protocol_name: str
    source_ae_title: str
    receiver_id: str
    completion_reason: CompletionReason
    completed_at: _timestamp_pb2.Timestamp
    total_size_bytes: int
    text_decoding_fallbacks: _containers.RepeatedScalarFieldContainer[str]
    issuer_of_patient_id: str
    completion_version: int
    completion_detail: str
    representative_sop_instance_uid: str
    def __init__(self, series_instance_uid: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., patient_id: _Optional[str] = ..., patient_name: _Optional[str] = ..., modality: _Optional[str] = ..., series_number: _Optional[int] = ..., series_description: _Optional[str] = ..., num_instances: _Optional[int] = ..., status: _Optional[_Union[SeriesStatus, str]] = ..., first_received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., study_date: _Optional[str] = ..., study_description: _Optional[str] = ..., accession_number: _Optional[str] = ..., body_part_examined: _Optional[str] = ..., manufacturer: _Optional[str] = ..., manufacturer_model_name: _Optional[str] = ..., station_name: _Optional[str] = ..., institution_name: _Optional[str] = ..., series_date: _Optional[str] = ..., protocol_name: _Optional[str] = ..., source_ae_title: _Optional[str] = ..., receiver_id: _Optional[str] = ..., completion_reason: _Optional[_Union[CompletionReason, str]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total_size_bytes: _Optional[int] = ..., text_decoding_fallbacks: _Optional[_Iterable[str]] = ..., issuer_of_patient_id: _Optional[str] = ..., completion_version: _Optional[int] = ..., completion_detail: _Optional[str] = ..., representative_sop_instance_uid: _Optional[str] = ...) -> None: ...

class Study(_message.Message):
    __slots__ = ("study_instance_uid", "patient_id", "patient_name", "study_date", "study_time", "study_description", "accession_number", "study_id", "referring_physician_name", "modalities", "num_series", "num_instances", "first_received_at", "last_received_at", "issuer_of_patient_id")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FIELD_NUMBER: _ClassVar[int]
    STUDY_TIME_FIELD_NUMBER: _ClassVar[int]
    STUDY_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    REFERRING_PHYSICIAN_NAME_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    NUM_SERIES_FIELD_NUMBER: _ClassVar[int]
    NUM_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    FIRST_RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_OF_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    study_time: str
    study_description: str
    accession_number: str
    study_id: str
    referring_physician_name: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    num_series: int
    num_instances: int
    first_received_at: _timestamp_pb2.Timestamp
    last_received_at: _timestamp_pb2.Timestamp
    issuer_of_patient_id: str
    def __init__(self, study_instance_uid: _Optional[str] = ..., patient_id: _Optional[str] = ..., patient_name: _Optional[str] = ..., study_date: _Optional[str] = ..., study_time: _Optional[str] = ..., study_description: _Optional[str] = ..., accession_number: _Optional[str] = ..., study_id: _Optional[str] = ..., referring_physician_name: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., num_series: _Optional[int] = ..., num_instances: _Optional[int] = ..., first_received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., issuer_of_patient_id: _Optional[str] = ...) -> None: ...

class Patient(_message.Message):
    __slots__ = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex", "num_studies", "last_received_at")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUER_OF_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    PATIENT_BIRTH_DATE_FIELD_NUMBER: _ClassVar[int]
    PATIENT_SEX_FIELD_NUMBER: _ClassVar[int]
    NUM_STUDIES_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    num_studies: int
    last_received_at: _timestamp_pb2.Timestamp
    def __init__(self, patient_id: _Optional[str] = ..., issuer_of_patient_id: _Optional[str] = ..., patient_name: _Optional[str] = ..., patient_birth_date: _Optional[str] = ..., patient_sex: _Optional[str] = ..., num_studies: _Optional[int] = ..., last_received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSeriesRequest(_message.Message):
    __slots__ = ("series_instance_uid", "page_size", "page_token")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    page_size: int
    page_token: str
    def __init__(self, series_instance_uid: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetSeriesResponse(_message.Message):
    __slots__ = ("series", "instances", "next_page_token")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    series: Series
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    next_page_token: str
    def __init__(self, series: _Optional[_Union[Series, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListSeriesRequest(_message.Message):
    __slots__ = ("patient_id", "study_instance_uid", "modality", "status", "study_date_from", "study_date_to", "received_after", "received_before", "page_size", "page_token", "patient_name", "accession_number", "study_description", "series_description", "referring_physician_name", "body_part_examined")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_TO_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AFTER_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PATIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STUDY_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SERIES_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REFERRING_PHYSICIAN_NAME_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_EXAMINED_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    study_instance_uid: str
    modality: str
    status: SeriesStatus
    study_date_from: str
    study_date_to: str
    received_after: _timestamp_pb2.Timestamp
    received_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    patient_name: str
    accession_number: str
    study_description: str
    series_description: str
    referring_physician_name: str
    body_part_examined: str
    def __init__(self, patient_id: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., modality: _Optional[str] = ..., status: _Optional[_Union[SeriesStatus, str]] = ..., study_date_from: _Optional[str] = ..., study_date_to: _Optional[str] = ..., received_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., patient_name: _Optional[str] = ..., accession_number: _Optional[str] = ..., study_description: _Optional[str] = ..., series_description: _Optional[str] = ..., referring_physician_name: _Optional[str] = ..., body_part_examined: _Optional[str] = ...) -> None: ...

class ListSeriesResponse(_message.Message):
    __slots__ = ("series", "next_page_token")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[Series]
    next_page_token: str
    def __init__(self, series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetStudyRequest(_message.Message):
    __slots__ = ("study_instance_uid",)
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    def __init__(self, study_instance_uid: _Optional[str] = ...) -> None: ...

class GetStudyResponse(_message.Message):
    __slots__ = ("study", "series")
    STUDY_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    study: Study
    series: _containers.RepeatedCompositeFieldContainer[Series]
    def __init__(self, study: _Optional[_Union[Study, _Mapping]] = ..., series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ...) -> None: ...

class ListStudiesRequest(_message.Message):
    __slots__ = ("patient_id", "accession_number", "study_date_from", "study_date_to", "page_size", "page_token", "patient_name", "study_description", "referring_physician_name", "series_description", "body_part_examined")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESSION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_TO_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PATIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STUDY_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REFERRING_PHYSICIAN_NAME_FIELD_NUMBER: _ClassVar[int]
    SERIES_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BODY_PART_EXAMINED_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    accession_number: str
    study_date_from: str
    study_date_to: str
    page_size: int
    page_token: str
    patient_name: str
    study_description: str
    referring_physician_name: str
    series_description: str
    body_part_examined: str
    def __init__(self, patient_id: _Optional[str] = ..., accession_number: _Optional[str] = ..., study_date_from: _Optional[str] = ..., study_date_to: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., patient_name: _Optional[str] = ..., study_description: _Optional[str] = ..., referring_physician_name: _Optional[str] = ..., series_description: _Optional[str] = ..., body_part_examined: _Optional[str] = ...) -> None: ...

class ListStudiesResponse(_message.Message):
    __slots__ = ("studies", "next_page_token")
    STUDIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    studies: _containers.RepeatedCompositeFieldContainer[Study]
    next_page_token: str
    def __init__(self, studies: _Optional[_Iterable[_Union[Study, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListPatientsRequest(_message.Message):
    __slots__ = ("patient_id", "page_size", "page_token")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    page_size: int
    page_token: str
    def __init__(self, patient_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPatientsResponse(_message.Message):
    __slots__ = ("patients", "next_page_token")
    PATIENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patients: _containers.RepeatedCompositeFieldContainer[Patient]
    next_page_token: str
    def __init__(self, patients: _Optional[_Iterable[_Union[Patient, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SeriesPreview(_message.Message):
    __slots__ = ("series_instance_uid", "sop_instance_uid", "png", "width", "height", "frame", "window", "window_center", "window_width", "failure_reason", "failure_detail", "rendered_at")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_CENTER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    FAILURE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    RENDERED_AT_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    sop_instance_uid: str
    png: bytes
    width: int
    height: int
    frame: int
    window: str
    window_center: float
    window_width: float
    failure_reason: str
    failure_detail: str
    rendered_at: _timestamp_pb2.Timestamp
    def __init__(self, series_instance_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frame: _Optional[int] = ..., window: _Optional[str] = ..., window_center: _Optional[float] = ..., window_width: _Optional[float] = ..., failure_reason: _Optional[str] = ..., failure_detail: _Optional[str] = ..., rendered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSeriesPreviewRequest(_message.Message):
    __slots__ = ("series_instance_uid",)
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    def __init__(self, series_instance_uid: _Optional[str] = ...) -> None: ...

class GetAttributesRequest(_message.Message):
    __slots__ = ("series_instance_uid", "attributes")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, series_instance_uid: _Optional[str] = ..., attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("requested", "tag", "keyword", "vr", "present", "value_json", "value")
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    VR_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    requested: str
    tag: str
    keyword: str
    vr: str
    present: bool
    value_json: str
    value: str
    def __init__(self, requested: _Optional[str] = ..., tag: _Optional[str] = ..., keyword: _Optional[str] = ..., vr: _Optional[str] = ..., present: _Optional[bool] = ..., value_json: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class GetAttributesResponse(_message.Message):
    __slots__ = ("series_instance_uid", "attributes")
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    series_instance_uid: str
    attributes: _containers.RepeatedCompositeFieldContainer[Attribute]
    def __init__(self, series_instance_uid: _Optional[str] = ..., attributes: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ...) -> None: ...

class WatchSeriesRequest(_message.Message):
    __slots__ = ("after_cursor", "kinds", "modality", "calling_ae_title", "consumer")
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    after_cursor: str
    kinds: _containers.RepeatedScalarFieldContainer[SeriesEventKind]
    modality: str
    calling_ae_title: str
    consumer: str
    def __init__(self, after_cursor: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[SeriesEventKind, str]]] = ..., modality: _Optional[str] = ..., calling_ae_title: _Optional[str] = ..., consumer: _Optional[str] = ...) -> None: ...

class SeriesEvent(_message.Message):
    __slots__ = ("cursor", "kind", "occurred_at", "completion_version", "completion_reason", "completion_detail", "instances_added", "series")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_REASON_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_DETAIL_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_ADDED_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    kind: SeriesEventKind
    occurred_at: _timestamp_pb2.Timestamp
    completion_version: int
    completion_reason: CompletionReason
    completion_detail: str
    instances_added: int
    series: Series
    def __init__(self, cursor: _Optional[str] = ..., kind: _Optional[_Union[SeriesEventKind, str]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completion_version: _Optional[int] = ..., completion_reason: _Optional[_Union[CompletionReason, str]] = ..., completion_detail: _Optional[str] = ..., instances_added: _Optional[int] = ..., series: _Optional[_Union[Series, _Mapping]] = ...) -> None: ...

class QueryKey(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("level", "match", "include_fields", "fuzzy_matching", "limit", "offset")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    FUZZY_MATCHING_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    level: QueryLevel
    match: _containers.RepeatedCompositeFieldContainer[QueryKey]
    include_fields: _containers.RepeatedScalarFieldContainer[str]
    fuzzy_matching: bool
    limit: int
    offset: int
    def __init__(self, level: _Optional[_Union[QueryLevel, str]] = ..., match: _Optional[_Iterable[_Union[QueryKey, _Mapping]]] = ..., include_fields: _Optional[_Iterable[str]] = ..., fuzzy_matching: _Optional[bool] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class UnsupportedKey(_message.Message):
    __slots__ = ("key", "reason")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key: str
    reason: str
    def __init__(self, key: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("unsupported_keys", "matches")
    UNSUPPORTED_KEYS_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    unsupported_keys: _containers.RepeatedCompositeFieldContainer[UnsupportedKey]
    matches: _containers.RepeatedCompositeFieldContainer[QueryMatch]
    def __init__(self, unsupported_keys: _Optional[_Iterable[_Union[UnsupportedKey, _Mapping]]] = ..., matches: _Optional[_Iterable[_Union[QueryMatch, _Mapping]]] = ...) -> None: ...

class QueryMatch(_message.Message):
    __slots__ = ("dataset_json",)
    DATASET_JSON_FIELD_NUMBER: _ClassVar[int]
    dataset_json: str
    def __init__(self, dataset_json: _Optional[str] = ...) -> None: ...
