"""The batched server on Ray Serve (optional extra ``[cluster]``; ADR 0095).

Only :mod:`.app`, :mod:`.ingress`, :mod:`.engine_replica`, :mod:`.directory` and
:mod:`.cli` import Ray; :mod:`.wire`, :mod:`.relay` and :mod:`.engine_side` are plain
asyncio, so the single-process server and tests can use them without Ray.
"""
