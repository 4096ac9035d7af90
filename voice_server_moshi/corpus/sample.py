"""The bundled sample call: one corpus call assembled from the committed clips."""

from __future__ import annotations

from .assemble import CorpusCall, build_call
from .store import bundled_clips

#: Seed of the sample call: it has a caller turn, a backchannel and a barge-in.
SAMPLE_SEED = 1
SAMPLE_SNR_DB = 20.0


def sample_call() -> CorpusCall:
    return build_call(bundled_clips(), SAMPLE_SEED, SAMPLE_SNR_DB)
