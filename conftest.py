"""Shared pytest fixtures (the Kyutai moshi.server peer, the dev checkpoint, fakes)."""

pytest_plugins = ["voice_server_moshi.testing.fixtures"]
