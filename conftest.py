"""Shared pytest fixtures (the Kyutai moshi.server peer, the dev checkpoint, fakes)."""
