"""Plain HTTP answers of the server (``process_request``, before any WebSocket upgrade)."""

from __future__ import annotations

import http
import json
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response


def response(status: http.HTTPStatus, body: str, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body.encode()))
    headers["Cache-Control"] = "no-store"
    # websockets closes the TCP connection after a process_request response; say so, or
    # keep-alive clients (httpx, Prometheus) race a reused, already-closed connection.
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body.encode())


def json_response(status: http.HTTPStatus, obj: Any) -> Response:
    return response(status, json.dumps(obj) + "\n", "application/json")
