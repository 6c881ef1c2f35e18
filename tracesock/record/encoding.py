"""Encoding what the recorder writes: the header record, payloads under the payload
policy (capped, redacted), and what to write when a record will not encode.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from typing import Any

from ..trace import events


def json_default(obj: Any) -> Any:
    """orjson's fallback for values it does not know (options, addresses...)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"hex": bytes(obj).hex()}
    return repr(obj)


def unencodable(ev: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """A record that would not encode, kept as what it is: numbers, and reprs."""
    keep = ("type", "seq", "t", "dur", "sock", "op", "nbytes")
    out = {k: (v if k in keep else repr(v)) for k, v in ev.items()}
    out["encode_error"] = str(exc)
    return out


def header_record(epoch: float, argv: list[str], payload: bool, max_payload: int | None,
                  redacted: int) -> dict[str, Any]:
    """Line 1 of a trace (docs/trace-format.md), before the caller's own fields."""
    return {
        "type": "trace",
        "format": events.FORMAT,
        "version": events.VERSION,
        "started": datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(),
        "epoch": epoch,
        "pid": os.getpid(),
        "argv": argv,
        "python": platform.python_version(),
        "platform": sys.platform,
        "payload": payload,
        "max_payload": max_payload,
        "redacted": redacted,
    }


def payload_text(data: Any, nbytes: int, redact: list[re.Pattern[bytes]],
                 cap: int | None) -> tuple[str, bool]:
    """The ``data`` field of the ``nbytes`` a call moved: redacted, then cut to ``cap``
    (True when it was cut)."""
    raw = bytes(data[:nbytes]) if len(data) != nbytes else bytes(data)
    for pattern in redact:
        raw = pattern.sub(lambda m: b"*" * len(m.group()), raw)
    truncated = cap is not None and len(raw) > cap
    if cap is not None and truncated:
        raw = raw[:cap]
    return events.encode_data(raw), truncated
