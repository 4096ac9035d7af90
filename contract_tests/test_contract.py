"""The contract scenarios, run against every provider.

The suite lives in the package (:mod:`voice_server_moshi.testing.contract`), so that a host
can run it against its own adapters from an installed wheel; this module is the project's
own entry point to it. The plugin (options, providers, fixtures) is enabled in the root
conftest.py. See docs/contract-suite.md.
"""

from voice_server_moshi.testing.contract.scenarios import *  # noqa: F403
