"""The Moshi adapter: Kyutai's wire protocol, transports (remote, embedded) and the adapter."""
