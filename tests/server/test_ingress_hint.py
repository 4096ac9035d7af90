"""`serve`'s hint to split Opus and the protocol into ingress workers (ADRs 0135, 0165)."""

from __future__ import annotations

import pytest

from voice_server_moshi.server.cli import ingress_hint, one_process_calls


def test_one_process_carries_more_calls_with_libopus() -> None:
    assert one_process_calls("sphn") == 48
    assert one_process_calls("libopus") == 67


@pytest.mark.parametrize("opus", ["sphn", "libopus"])
def test_no_hint_where_one_process_carries_the_calls_or_no_core_is_spare(opus: str) -> None:
    per = one_process_calls(opus)
    assert ingress_hint(per, 0, 64, opus) is None  # the event loop carries them
    assert ingress_hint(200, 2, 64, opus) is None  # already split
    assert ingress_hint(200, 0, 2, opus) is None  # no core to spare for a worker
    assert ingress_hint(200, 0, None, opus) is None


@pytest.mark.parametrize("opus", ["sphn", "libopus"])
def test_the_hint_sizes_the_workers_by_calls_and_spare_cores(opus: str) -> None:
    per = one_process_calls(opus)
    hint = ingress_hint(per + 1, 0, 16, opus)
    assert hint is not None and "--ingress-workers 2" in hint and "16 cores" in hint
    assert f"about {per} calls" in hint and f"({opus})" in hint
    assert "--ingress-workers 2" in (ingress_hint(500, 0, 4, opus) or "")  # 4 cores: 2 spare
    assert "--ingress-workers 3" in (ingress_hint(3 * per, 0, 64, opus) or "")
