"""``serve --static DIR``: a built web client (Kyutai's, or any static UI) at ``/``.

Kyutai's Python server serves its web UI itself (``--static``); ours does the same beside
the API, so an operator opens the server's address in a browser and talks to the model.
Web-stack agnostic: :meth:`StaticFiles.lookup` maps a request path to a file's bytes and
content type, and the caller (the ``websockets`` server, or an ASGI app) wraps them.

Only files under the root are served: the path is resolved and checked to stay inside it
(no ``..``, no symlink escapes); API paths are never shadowed because the server asks for
its own routes first.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

__all__ = ["StaticFile", "StaticFiles"]

#: Largest file served (a built Kyutai client's biggest asset is a few MB).
MAX_FILE_BYTES = 64 << 20

_EXTRA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
                ".svg": "image/svg+xml", ".webmanifest": "application/manifest+json"}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str


class StaticFiles:
    """Files under ``root``; ``/`` and directories serve their ``index.html``."""

    def __init__(self, root: str | Path) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise ValueError(f"--static {root!s}: not a directory")
        if not (path / "index.html").is_file():
            raise ValueError(
                f"--static {root!s}: no index.html there (for Kyutai's client, point at "
                "the build output, e.g. client/dist after 'npm run build')"
            )
        self.root = path.resolve()

    def lookup(self, request_path: str) -> StaticFile | None:
        """The file for ``request_path`` (URL path, query already stripped), or None."""
        rel = unquote(request_path).lstrip("/")
        if "\x00" in rel:
            return None
        target = (self.root / rel).resolve()
        if target != self.root and self.root not in target.parents:
            return None  # traversal or a symlink out of the root
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() or target.stat().st_size > MAX_FILE_BYTES:
            return None
        ctype = _EXTRA_TYPES.get(target.suffix.lower()) or (
            mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        if ctype.startswith("text/") or ctype in ("application/json",):
            ctype += "; charset=utf-8"
        return StaticFile(target.read_bytes(), ctype)
