"""The strict HTTP/1.1 core, without I/O: read, check, normalize, write.

This file stays Python: it puts the mypyc build of the package's modules first on
`__path__` when `meshgate.native` chooses it (a build matching the sources), before any
of them is imported. The `.py` modules are the source and the fallback.
"""

from meshgate import native

__path__ = native.choose_http_path(__path__)

from meshgate.http.errors import HttpError
from meshgate.http.events import (
    CONNECTION_CLOSED,
    NEED_DATA,
    BodyKind,
    Data,
    EndOfMessage,
    Event,
    Framing,
    Headers,
    HttpLimits,
    InterimResponse,
    RequestHead,
    ResponseHead,
    Signal,
)
from meshgate.http.forwarding import (
    DEFAULT_IDENTITY_HEADERS,
    HOP_BY_HOP_HEADERS,
    ForwardedRequest,
    PeerCertificate,
    context_headers,
    forward_request_headers,
    forward_response_headers,
    is_valid_traceparent,
    xfcc_value,
)
from meshgate.http.path import NormalizedTarget, normalize_target
from meshgate.http.reader import RequestReader, ResponseReader
from meshgate.http.serialize import (
    LAST_CHUNK,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
)

__all__ = [
    "CONNECTION_CLOSED",
    "DEFAULT_IDENTITY_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "LAST_CHUNK",
    "NEED_DATA",
    "BodyKind",
    "Data",
    "EndOfMessage",
    "Event",
    "ForwardedRequest",
    "Framing",
    "Headers",
    "HttpError",
    "HttpLimits",
    "InterimResponse",
    "NormalizedTarget",
    "PeerCertificate",
    "RequestHead",
    "RequestReader",
    "ResponseHead",
    "ResponseReader",
    "Signal",
    "context_headers",
    "encode_chunk",
    "forward_request_headers",
    "forward_response_headers",
    "is_valid_traceparent",
    "normalize_target",
    "serialize_request_head",
    "serialize_response_head",
    "xfcc_value",
]
