"""JSON with bytes: how mq_server.py and the tests exchange binary arguments.

A `bytes` value travels as ``{"$bytes": "<base64>"}``, inside lists and
objects too. Standard library only (both virtualenvs import it).
"""
from __future__ import annotations

import base64


def encode(value):
    """`value` with every bytes-like value replaced by ``{"$bytes": …}``."""
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value):
    """The inverse of `encode` (tuples come back as lists)."""
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value
