from pfl_edge.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_ARGUMENT: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_FOUND: _ClassVar[ErrorCode]
    ERROR_CODE_PERMISSION_DENIED: _ClassVar[ErrorCode]
    ERROR_CODE_ALREADY_EXISTS: _ClassVar[ErrorCode]
    ERROR_CODE_FAILED_PRECONDITION: _ClassVar[ErrorCode]
    ERROR_CODE_RESOURCE_EXHAUSTED: _ClassVar[ErrorCode]
    ERROR_CODE_DATA_LOSS: _ClassVar[ErrorCode]
    ERROR_CODE_UNAUTHENTICATED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_ABORTED: _ClassVar[ErrorCode]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID_ARGUMENT: ErrorCode
ERROR_CODE_NOT_FOUND: ErrorCode
ERROR_CODE_PERMISSION_DENIED: ErrorCode
ERROR_CODE_ALREADY_EXISTS: ErrorCode
ERROR_CODE_FAILED_PRECONDITION: ErrorCode
ERROR_CODE_RESOURCE_EXHAUSTED: ErrorCode
ERROR_CODE_DATA_LOSS: ErrorCode
ERROR_CODE_UNAUTHENTICATED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_DEADLINE_EXCEEDED: ErrorCode
ERROR_CODE_ABORTED: ErrorCode

class Value(_message.Message):
    __slots__ = ("number", "integer", "text", "flag")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    number: float
    integer: int
    text: str
    flag: bool
    def __init__(self, number: _Optional[float] = ..., integer: _Optional[int] = ..., text: _Optional[str] = ..., flag: _Optional[bool] = ...) -> None: ...

class DeviceProfile(_message.Message):
    __slots__ = ("cpu_arch", "cpu_cores", "memory_bytes", "accelerator", "hostname")
    CPU_ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    cpu_arch: str
    cpu_cores: int
    memory_bytes: int
    accelerator: str
    hostname: str
    def __init__(self, cpu_arch: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., accelerator: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("architecture", "parameter_count", "input_shape", "num_classes")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    parameter_count: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    def __init__(self, architecture: _Optional[str] = ..., parameter_count: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("token", "device", "model", "num_train_samples", "num_test_samples", "public_data_sha256")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_DATA_SHA256_FIELD_NUMBER: _ClassVar[int]
    token: str
    device: DeviceProfile
    model: ModelInfo
    num_train_samples: int
    num_test_samples: int
    public_data_sha256: str
    def __init__(self, token: _Optional[str] = ..., device: _Optional[_Union[DeviceProfile, _Mapping]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., num_train_samples: _Optional[int] = ..., num_test_samples: _Optional[int] = ..., public_data_sha256: _Optional[str] = ...) -> None: ...

class PublicDataInfo(_message.Message):
    __slots__ = ("name", "sha256", "num_samples", "sample_shape", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    num_samples: int
    sample_shape: _containers.RepeatedScalarFieldContainer[int]
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., num_samples: _Optional[int] = ..., sample_shape: _Optional[_Iterable[int]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class RunConfig(_message.Message):
    __slots__ = ("algorithm", "total_rounds", "completed_rounds", "public_data", "params", "chunk_bytes", "max_message_bytes", "run_uid")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_DATA_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUN_UID_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    total_rounds: int
    completed_rounds: int
    public_data: PublicDataInfo
    params: _containers.MessageMap[str, Value]
    chunk_bytes: int
    max_message_bytes: int
    run_uid: str
    def __init__(self, algorithm: _Optional[str] = ..., total_rounds: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., public_data: _Optional[_Union[PublicDataInfo, _Mapping]] = ..., params: _Optional[_Mapping[str, Value]] = ..., chunk_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., run_uid: _Optional[str] = ...) -> None: ...

class PublicDataRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class PublicData(_message.Message):
    __slots__ = ("info", "images")
    INFO_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    info: PublicDataInfo
    images: _tensor_pb2.Tensor
    def __init__(self, info: _Optional[_Union[PublicDataInfo, _Mapping]] = ..., images: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class PublicSelection(_message.Message):
    __slots__ = ("seed", "count", "digest")
    SEED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    seed: int
    count: int
    digest: bytes
    def __init__(self, seed: _Optional[int] = ..., count: _Optional[int] = ..., digest: _Optional[bytes] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("phase", "action", "public", "params", "tensors")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    phase: int
    action: str
    public: PublicSelection
    params: _containers.MessageMap[str, Value]
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    def __init__(self, phase: _Optional[int] = ..., action: _Optional[str] = ..., public: _Optional[_Union[PublicSelection, _Mapping]] = ..., params: _Optional[_Mapping[str, Value]] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("what", "start_unix", "end_unix")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_FIELD_NUMBER: _ClassVar[int]
    what: str
    start_unix: float
    end_unix: float
    def __init__(self, what: _Optional[str] = ..., start_unix: _Optional[float] = ..., end_unix: _Optional[float] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("phase", "action", "tensors", "metrics", "busy")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    phase: int
    action: str
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    metrics: _containers.ScalarMap[str, float]
    busy: _containers.RepeatedCompositeFieldContainer[Interval]
    def __init__(self, phase: _Optional[int] = ..., action: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., busy: _Optional[_Iterable[_Union[Interval, _Mapping]]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("values", "labels")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Shutdown(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("agent_id", "run_id", "round", "seq", "register", "run_config", "public_data_request", "public_data", "task", "result", "metrics", "error", "shutdown")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_DATA_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_DATA_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    round: int
    seq: int
    register: Register
    run_config: RunConfig
    public_data_request: PublicDataRequest
    public_data: PublicData
    task: Task
    result: Result
    metrics: Metrics
    error: Error
    shutdown: Shutdown
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., seq: _Optional[int] = ..., register: _Optional[_Union[Register, _Mapping]] = ..., run_config: _Optional[_Union[RunConfig, _Mapping]] = ..., public_data_request: _Optional[_Union[PublicDataRequest, _Mapping]] = ..., public_data: _Optional[_Union[PublicData, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ...) -> None: ...

class Head(_message.Message):
    __slots__ = ("transfer_id", "envelope", "blob_bytes", "chunk_bytes")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    transfer_id: int
    envelope: Envelope
    blob_bytes: _containers.RepeatedScalarFieldContainer[int]
    chunk_bytes: int
    def __init__(self, transfer_id: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ..., blob_bytes: _Optional[_Iterable[int]] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("transfer_id", "blob", "index", "data", "xxh3_64")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    XXH3_64_FIELD_NUMBER: _ClassVar[int]
    transfer_id: int
    blob: int
    index: int
    data: bytes
    xxh3_64: int
    def __init__(self, transfer_id: _Optional[int] = ..., blob: _Optional[int] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ..., xxh3_64: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("envelope", "head", "chunk", "message_id")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    head: Head
    chunk: Chunk
    message_id: int
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., head: _Optional[_Union[Head, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., message_id: _Optional[int] = ...) -> None: ...
