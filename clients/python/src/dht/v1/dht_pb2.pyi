from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUERY_EVENT_TYPE_SENDING_QUERY: _ClassVar[QueryEventType]
    QUERY_EVENT_TYPE_PEER_RESPONSE: _ClassVar[QueryEventType]
    QUERY_EVENT_TYPE_FINAL_PEER: _ClassVar[QueryEventType]
    QUERY_EVENT_TYPE_QUERY_ERROR: _ClassVar[QueryEventType]
    QUERY_EVENT_TYPE_PROVIDER: _ClassVar[QueryEventType]
    QUERY_EVENT_TYPE_VALUE: _ClassVar[QueryEventType]
    QUERY_EVENT_TYPE_ADDING_PEER: _ClassVar[QueryEventType]
    QUERY_EVENT_TYPE_DIALING_PEER: _ClassVar[QueryEventType]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_SERVER: _ClassVar[Mode]
    MODE_CLIENT: _ClassVar[Mode]
QUERY_EVENT_TYPE_SENDING_QUERY: QueryEventType
QUERY_EVENT_TYPE_PEER_RESPONSE: QueryEventType
QUERY_EVENT_TYPE_FINAL_PEER: QueryEventType
QUERY_EVENT_TYPE_QUERY_ERROR: QueryEventType
QUERY_EVENT_TYPE_PROVIDER: QueryEventType
QUERY_EVENT_TYPE_VALUE: QueryEventType
QUERY_EVENT_TYPE_ADDING_PEER: QueryEventType
QUERY_EVENT_TYPE_DIALING_PEER: QueryEventType
MODE_UNSPECIFIED: Mode
MODE_SERVER: Mode
MODE_CLIENT: Mode

class PeerInfo(_message.Message):
    __slots__ = ("id", "addrs")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryEvent(_message.Message):
    __slots__ = ("type", "id", "responses", "extra")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    type: QueryEventType
    id: str
    responses: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    extra: str
    def __init__(self, type: _Optional[_Union[QueryEventType, str]] = ..., id: _Optional[str] = ..., responses: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., extra: _Optional[str] = ...) -> None: ...

class FindPeerRequest(_message.Message):
    __slots__ = ("peer_id",)
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    def __init__(self, peer_id: _Optional[str] = ...) -> None: ...

class FindPeerResponse(_message.Message):
    __slots__ = ("peer",)
    PEER_FIELD_NUMBER: _ClassVar[int]
    peer: PeerInfo
    def __init__(self, peer: _Optional[_Union[PeerInfo, _Mapping]] = ...) -> None: ...

class FindProvsRequest(_message.Message):
    __slots__ = ("cid", "num_providers")
    CID_FIELD_NUMBER: _ClassVar[int]
    NUM_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    cid: str
    num_providers: int
    def __init__(self, cid: _Optional[str] = ..., num_providers: _Optional[int] = ...) -> None: ...

class FindProvsResponse(_message.Message):
    __slots__ = ("provider",)
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    provider: PeerInfo
    def __init__(self, provider: _Optional[_Union[PeerInfo, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    def __init__(self, value: _Optional[bytes] = ...) -> None: ...

class ProvideRequest(_message.Message):
    __slots__ = ("cids", "recursive", "batch_events", "min_holders")
    CIDS_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    BATCH_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MIN_HOLDERS_FIELD_NUMBER: _ClassVar[int]
    cids: _containers.RepeatedScalarFieldContainer[str]
    recursive: bool
    batch_events: bool
    min_holders: int
    def __init__(self, cids: _Optional[_Iterable[str]] = ..., recursive: _Optional[bool] = ..., batch_events: _Optional[bool] = ..., min_holders: _Optional[int] = ...) -> None: ...

class ProvideResponse(_message.Message):
    __slots__ = ("event", "cid", "events", "holders")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    event: QueryEvent
    cid: str
    events: _containers.RepeatedCompositeFieldContainer[ProvideEvent]
    holders: _containers.RepeatedCompositeFieldContainer[ProvideHolders]
    def __init__(self, event: _Optional[_Union[QueryEvent, _Mapping]] = ..., cid: _Optional[str] = ..., events: _Optional[_Iterable[_Union[ProvideEvent, _Mapping]]] = ..., holders: _Optional[_Iterable[_Union[ProvideHolders, _Mapping]]] = ...) -> None: ...

class ProvideHolders(_message.Message):
    __slots__ = ("cid", "holders")
    CID_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    cid: str
    holders: int
    def __init__(self, cid: _Optional[str] = ..., holders: _Optional[int] = ...) -> None: ...

class ProvideEvent(_message.Message):
    __slots__ = ("event", "cid")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    event: QueryEvent
    cid: str
    def __init__(self, event: _Optional[_Union[QueryEvent, _Mapping]] = ..., cid: _Optional[str] = ...) -> None: ...

class ProvideManyRequest(_message.Message):
    __slots__ = ("cids",)
    CIDS_FIELD_NUMBER: _ClassVar[int]
    cids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProvideManyResponse(_message.Message):
    __slots__ = ("received", "committed", "announced", "failed", "batches")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    received: int
    committed: int
    announced: int
    failed: int
    batches: int
    def __init__(self, received: _Optional[int] = ..., committed: _Optional[int] = ..., announced: _Optional[int] = ..., failed: _Optional[int] = ..., batches: _Optional[int] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "batch_events", "min_holders")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BATCH_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MIN_HOLDERS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    batch_events: bool
    min_holders: int
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., batch_events: _Optional[bool] = ..., min_holders: _Optional[int] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("event", "events", "holders")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    event: QueryEvent
    events: _containers.RepeatedCompositeFieldContainer[QueryEvent]
    holders: int
    def __init__(self, event: _Optional[_Union[QueryEvent, _Mapping]] = ..., events: _Optional[_Iterable[_Union[QueryEvent, _Mapping]]] = ..., holders: _Optional[int] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("peer_id", "batch_events")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_EVENTS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    batch_events: bool
    def __init__(self, peer_id: _Optional[str] = ..., batch_events: _Optional[bool] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("event", "events")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event: QueryEvent
    events: _containers.RepeatedCompositeFieldContainer[QueryEvent]
    def __init__(self, event: _Optional[_Union[QueryEvent, _Mapping]] = ..., events: _Optional[_Iterable[_Union[QueryEvent, _Mapping]]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("peer_id", "addrs", "mode", "protocol", "routing_table_size", "connected_peers", "version", "queries_in_flight", "announced_addrs", "network_size")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ROUTING_TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_PEERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ANNOUNCED_ADDRS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SIZE_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    mode: Mode
    protocol: str
    routing_table_size: int
    connected_peers: int
    version: str
    queries_in_flight: int
    announced_addrs: _containers.RepeatedScalarFieldContainer[str]
    network_size: int
    def __init__(self, peer_id: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., protocol: _Optional[str] = ..., routing_table_size: _Optional[int] = ..., connected_peers: _Optional[int] = ..., version: _Optional[str] = ..., queries_in_flight: _Optional[int] = ..., announced_addrs: _Optional[_Iterable[str]] = ..., network_size: _Optional[int] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("addr",)
    ADDR_FIELD_NUMBER: _ClassVar[int]
    addr: str
    def __init__(self, addr: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("peer", "added_to_routing_table")
    PEER_FIELD_NUMBER: _ClassVar[int]
    ADDED_TO_ROUTING_TABLE_FIELD_NUMBER: _ClassVar[int]
    peer: PeerInfo
    added_to_routing_table: bool
    def __init__(self, peer: _Optional[_Union[PeerInfo, _Mapping]] = ..., added_to_routing_table: _Optional[bool] = ...) -> None: ...

class ListProvidesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ProvidedCid(_message.Message):
    __slots__ = ("cid", "last_announced")
    CID_FIELD_NUMBER: _ClassVar[int]
    LAST_ANNOUNCED_FIELD_NUMBER: _ClassVar[int]
    cid: str
    last_announced: float
    def __init__(self, cid: _Optional[str] = ..., last_announced: _Optional[float] = ...) -> None: ...

class ListProvidesResponse(_message.Message):
    __slots__ = ("cids", "next_page_token")
    CIDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    cids: _containers.RepeatedCompositeFieldContainer[ProvidedCid]
    next_page_token: str
    def __init__(self, cids: _Optional[_Iterable[_Union[ProvidedCid, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StopProvidingRequest(_message.Message):
    __slots__ = ("cids",)
    CIDS_FIELD_NUMBER: _ClassVar[int]
    cids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cids: _Optional[_Iterable[str]] = ...) -> None: ...

class StopProvidingResponse(_message.Message):
    __slots__ = ("stopped",)
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    stopped: int
    def __init__(self, stopped: _Optional[int] = ...) -> None: ...

class ListPutsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class PutRecord(_message.Message):
    __slots__ = ("key", "value", "last_put")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LAST_PUT_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    last_put: float
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., last_put: _Optional[float] = ...) -> None: ...

class ListPutsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[PutRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[PutRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StopRepublishingRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class StopRepublishingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProvideStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReprovideCycle(_message.Message):
    __slots__ = ("started", "duration", "due", "done", "failed", "error")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    started: float
    duration: float
    due: int
    done: int
    failed: int
    error: str
    def __init__(self, started: _Optional[float] = ..., duration: _Optional[float] = ..., due: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ProvideStatusResponse(_message.Message):
    __slots__ = ("cids", "current", "last", "next_cycle", "reprovide_interval", "cycles", "background_stores", "background_stored", "background_failed")
    CIDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    NEXT_CYCLE_FIELD_NUMBER: _ClassVar[int]
    REPROVIDE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_STORES_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_STORED_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FAILED_FIELD_NUMBER: _ClassVar[int]
    cids: int
    current: ReprovideCycle
    last: ReprovideCycle
    next_cycle: float
    reprovide_interval: float
    cycles: int
    background_stores: int
    background_stored: int
    background_failed: int
    def __init__(self, cids: _Optional[int] = ..., current: _Optional[_Union[ReprovideCycle, _Mapping]] = ..., last: _Optional[_Union[ReprovideCycle, _Mapping]] = ..., next_cycle: _Optional[float] = ..., reprovide_interval: _Optional[float] = ..., cycles: _Optional[int] = ..., background_stores: _Optional[int] = ..., background_stored: _Optional[int] = ..., background_failed: _Optional[int] = ...) -> None: ...
