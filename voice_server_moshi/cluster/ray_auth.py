"""Where Ray listens, and Ray's token authentication when it must listen beyond loopback.

``voice-server-moshi cluster`` on one machine starts its own Ray on loopback whatever
``--host`` says: only Serve's HTTP proxy (the callers' port) binds to ``--host``. Ray has
no authentication unless it is turned on, and anyone who reaches its ports (the GCS, the
raylet, the workers) can run code as the cluster's user, so the callers' address is never
Ray's address (ADR 0100).

A cluster of several machines needs Ray beyond loopback: then ``cluster --ray-address``
attaches to a Ray cluster started with ``RAY_AUTH_MODE=token`` (``ray start``, see
docs/security.md), and this module checks the token before Ray is imported. The token
comes from a file (``--ray-auth-token-file`` or ``RAY_AUTH_TOKEN_PATH``), never from the
command line (``/proc/PID/cmdline`` is readable by every local user) and never from
``RAY_AUTH_TOKEN`` here: the command refuses to start otherwise. No Ray import here.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from ..server.auth import TokenError, read_token_file

__all__ = ["LOOPBACK", "RayAuthError", "ray_auth_for_attach"]

#: Where the local cluster's Ray (GCS, raylet, workers, data planes) listens.
LOOPBACK = "127.0.0.1"

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_ENV = "RAY_AUTH_TOKEN"


class RayAuthError(ValueError):
    """Ray beyond loopback without a usable token: the command must not start."""


def ray_auth_for_attach(token_file: str | None,
                        env: MutableMapping[str, str] | None = None) -> list[str]:
    """Turn Ray's token authentication on in ``env`` (default: this process's environment)
    for a driver attaching to a Ray cluster beyond loopback; returns warnings.

    The token file is ``token_file`` or ``$RAY_AUTH_TOKEN_PATH``; it must be readable and
    not empty. Raises :class:`RayAuthError` when there is none, when ``RAY_AUTH_MODE``
    says anything but ``token``, or when ``RAY_AUTH_TOKEN`` is set (Ray would prefer it
    to the file, and a token in the environment is one ``ps e`` away from being shown).
    Call before ``import ray``: Ray reads these once.
    """
    e = os.environ if env is None else env
    mode = e.get(MODE_ENV, "token").strip().lower()
    if mode != "token":
        raise RayAuthError(f"{MODE_ENV}={e[MODE_ENV]!r}: a Ray cluster beyond loopback needs "
                           "token authentication (unset it or set it to 'token')")
    if e.get(TOKEN_ENV):
        raise RayAuthError(f"{TOKEN_ENV} is set: give the Ray token as a file instead "
                           f"(--ray-auth-token-file or {TOKEN_PATH_ENV})")
    path = token_file or e.get(TOKEN_PATH_ENV)
    if not path:
        raise RayAuthError("--ray-address needs Ray's token authentication: give the cluster's "
                           f"token file with --ray-auth-token-file (or {TOKEN_PATH_ENV}); "
                           "see docs/security.md")
    try:
        _, warnings = read_token_file(path)
    except TokenError as exc:
        raise RayAuthError(str(exc).replace("auth token file", "Ray token file")) from None
    e[MODE_ENV] = "token"
    e[TOKEN_PATH_ENV] = str(Path(path).expanduser().resolve())
    return [w.replace("auth token file", "Ray token file") for w in warnings]
