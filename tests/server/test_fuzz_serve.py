"""The live protocol fuzz, bounded for CI (issue 25 item 4): the real ``serve`` (dev
checkpoint, CPU) takes 1500 fuzzed messages over three connections (``bench fuzz``'s own
code: :mod:`voice_server_moshi.bench.fuzz`) while a canary call streams real-time audio.
The long run is ``voice-server-moshi bench fuzz --messages 100000``
(docs/fuzz-and-soak.md)."""

from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.bench import fuzz


@pytest.mark.slow
def test_serve_survives_a_fuzz_beside_a_canary_with_nothing_leaked() -> None:
    args = argparse.Namespace(messages=1500, connections=3, slots=4, seed=7, baseline_s=3.0,
                              checkpoint="dev", device="cpu")
    r = fuzz.run(args)
    print(json.dumps({k: r[k] for k in ("fuzz", "crashes", "leaks", "canary")}, indent=1))
    f, crashes, leaks, canary = r["fuzz"], r["crashes"], r["leaks"], r["canary"]
    assert f["messages"] == 1500 and f["connections"] > 10
    # Every kind of message went out, and serve ended connections for several reasons.
    assert set(f["families"]) >= {"audio", "audio_mutated", "say_text", "say_audio", "cancel",
                                  "kyutai_kind", "unknown_kind", "random", "empty"}
    assert len(f["server_closes"]) >= 3, f["server_closes"]
    # No crash: serve ran to the end and stopped cleanly, no traceback or error line in its
    # log, every close code documented, no connection refused at the TCP level.
    assert crashes["count"] == 0, crashes
    assert crashes["serve_alive_at_end"] and crashes["exit_code_on_sigint"] == 0
    assert f["undocumented_closes"] == [] and f["connect_failures"] == {}, f
    # No leak: every slot free again, no file descriptor or thread more than before.
    assert leaks["slots_leaked"] == 0 and leaks["fds_leaked"] <= 0, leaks
    # (A thread pool may start one worker late; a leak would grow with the connections.)
    assert leaks["threads_leaked"] <= 2, leaks
    # The canary kept its call: never closed by the server, no error but the no-input
    # reap after it stopped talking. (Its lag is judged by the long run on an idle host.)
    during = canary["during_fuzz"]
    assert not during["closed_by_server"], during
    assert during["error"] is None or during["error"].startswith("no audio for"), during
    assert during["frames_answered"] > 0
