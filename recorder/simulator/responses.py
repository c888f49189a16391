"""What the simulated exchange answers: a status, a body and headers; bodies in Binance's compact JSON or HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    code: int | None = None
    # Hostile sending, for faults: one byte every trickle_seconds (of the body, or with trickle_head of the
    # whole response from the status line on); stream_bytes of filler with no Content-Length, then close.
    trickle_seconds: float = 0.0
    trickle_head: bool = False
    stream_bytes: int = 0


def _json(status: int, payload: Any, **headers: str) -> _Response:
    code = payload.get("code") if isinstance(payload, dict) and status >= 400 else None
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, headers=dict(headers), code=code)


def _error(status: int, code: int, msg: str, **headers: str) -> _Response:
    return _json(status, {"code": code, "msg": msg}, **headers)


def _html(status: int, page: str) -> _Response:
    return _Response(status, page.encode(), content_type="text/html")
