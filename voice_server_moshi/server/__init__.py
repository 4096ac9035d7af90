"""The batched Moshi server (``voice-server-moshi serve``); needs the ``embedded`` extra."""
