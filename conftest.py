"""Shared pytest fixtures (the Kyutai moshi.server peer, the dev checkpoint, fakes), and the
contract suite's plugin (its options, providers and fixtures; scenarios in contract_tests/)."""

pytest_plugins = [
    "voice_server_moshi.testing.fixtures",
    "voice_server_moshi.testing.contract.plugin",
]
