"""``voice-server-moshi call``: a phone call through the plugin, with its recordings, timeline,
latency report and picture. :mod:`.main` is the command; the parts are small modules."""
