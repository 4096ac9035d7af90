"""Plain HTTP answers of the server (``process_request``, before any WebSocket upgrade)."""

from __future__ import annotations

import http
import json
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response


def response(status: http.HTTPStatus, body: str, content_type: str) -> Response:
    return bytes_response(status, body.encode(), content_type)


def bytes_response(status: http.HTTPStatus, body: bytes, content_type: str, *,
                   cache: str = "no-store") -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = cache
    # websockets closes the TCP connection after a process_request response; say so, or
    # keep-alive clients (httpx, Prometheus) race a reused, already-closed connection.
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body)


def json_response(status: http.HTTPStatus, obj: Any) -> Response:
    return response(status, json.dumps(obj) + "\n", "application/json")
