"""Hand-made Ogg pages for hostile-client tests (the page tools are
:mod:`voice_server_moshi.audio.ogg_pages`), e.g. an "Opus bomb": one small page holding
many Opus packets that decode to seconds of audio."""

from __future__ import annotations

import numpy as np
import sphn

from voice_server_moshi.audio.ogg_pages import ogg_crc, page, parse_pages

__all__ = ["ogg_crc", "opus_bomb", "page", "parse_pages"]


def opus_bomb(pages: int, packets_per_page: int = 50) -> list[bytes]:
    """The stream headers, then ``pages`` pages of ``packets_per_page`` copies of sphn's
    80 ms of silence each (50 -> 4 s per page of about 5 kB). Each item is one message."""
    w = sphn.OpusStreamWriter(24000)
    first = bytes(w.append_pcm(np.zeros(1920, np.float32)))
    parsed = parse_pages(first)
    serial = parsed[0][2]
    headers = b"".join(page(p[4], serial=serial, seq=p[3], granule=p[1], htype=p[0])
                       for p in parsed[:2])
    frame = [p for pg in parsed[2:] for p in pg[4]]  # the packets of one 80 ms frame
    out = [headers]
    granule = 0
    for i in range(pages):
        granule += packets_per_page * 3840
        out.append(page(frame * packets_per_page, serial=serial, seq=2 + i, granule=granule))
    return out
