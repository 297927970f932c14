"""Pure pre-send normalization: request snapshot + continuation state -> request + decision.

No I/O, no clock, no logging, no globals beyond constant codecs.
"""

from normalizer.normalize import aborted_output, expand_to_full, normalize, to_http_body
from normalizer.snapshot import (
    Item,
    RequestDecodeError,
    RequestSnapshot,
    decode_request,
    encode_request,
    encode_request_bytes,
    item_from_raw,
    make_item,
)
from normalizer.types import (
    ContinuationState,
    Decision,
    InvariantState,
    InvariantViolation,
    NormalizeResult,
    PendingCall,
    Reason,
)

__all__ = [
    "ContinuationState",
    "Decision",
    "InvariantState",
    "InvariantViolation",
    "Item",
    "NormalizeResult",
    "PendingCall",
    "Reason",
    "RequestDecodeError",
    "RequestSnapshot",
    "aborted_output",
    "decode_request",
    "encode_request",
    "encode_request_bytes",
    "expand_to_full",
    "item_from_raw",
    "make_item",
    "normalize",
    "to_http_body",
]
