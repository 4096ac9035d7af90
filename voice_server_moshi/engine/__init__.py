"""The embedded batched Moshi engine (needs the ``embedded`` extra: torch, moshi).

:mod:`.models` loads Mimi + the LM through the ``moshi`` package's own loaders;
:mod:`.core` runs N calls in one batch; :mod:`.session` is one call seen from asyncio;
:mod:`.shared` keeps one engine per model setting per process. Importing this package
imports torch; the plugin's core modules never do.
"""
