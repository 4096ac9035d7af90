"""The contract suite, reusable by a host against its own adapters.

- :mod:`.framework`: :class:`Provider` (subclass it for your adapter), the simulated
  caller (:class:`Call`, :func:`in_call`), normalization and the parity rules;
- :mod:`.providers`: the built-in providers (the vendor adapters against the fakes in
  :mod:`voice_server_moshi.testing`, Moshi against ``moshi.server`` and the embedded engine);
- :mod:`.plugin`: the pytest plugin (``--contract-provider``, ``--contract-only``,
  ``--contract-record``; the ``peer`` and ``rec`` fixtures);
- :mod:`.scenarios`: the scenarios, a pytest test module.

Run them against your adapter (see docs/contract-suite.md)::

    pytest -p voice_server_moshi.testing.contract.plugin \\
        --pyargs voice_server_moshi.testing.contract.scenarios \\
        --contract-provider acme_voice.contract:AcmeProvider --contract-only acme

Importing this package imports neither pytest nor torch (the Moshi providers import
``moshi`` only when they run).
"""

from .framework import (
    END_BOUND_S,
    EVENT_TIMEOUT_S,
    SCENARIOS,
    TELEPHONY,
    Call,
    PeerCannot,
    Provider,
    caller_frame,
    check_parity,
    in_call,
    normalize,
    token,
)

__all__ = [
    "END_BOUND_S",
    "EVENT_TIMEOUT_S",
    "SCENARIOS",
    "TELEPHONY",
    "Call",
    "PeerCannot",
    "Provider",
    "caller_frame",
    "check_parity",
    "in_call",
    "normalize",
    "token",
]
