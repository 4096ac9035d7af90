"""The reference host: a small turn-based orchestrator wired to the plugin (tests, demos)."""
