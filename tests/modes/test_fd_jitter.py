"""The caller jitter buffer (ADR 0140): late frames used, lost ones concealed, delay bounded."""

from __future__ import annotations

import numpy as np
import pytest

from voice_server_moshi.audio import g711
from voice_server_moshi.audio.plc import Concealer
from voice_server_moshi.modes.jitter import CallerJitterBuffer
from voice_server_moshi.modes.levels import pcm_level_dbfs

RATE = 8000
N = 160  # 20 ms


def tone(k: int, level: float = 8000.0, hz: float = 150.0) -> np.ndarray:
    t = (k * N + np.arange(N)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def frame(k: int, level: float = 8000.0) -> bytes:
    return g711.encode(tone(k, level), "mulaw")


def buffer(**kw: float) -> CallerJitterBuffer:
    return CallerJitterBuffer(frame_ms=20.0, encoding="mulaw", sample_rate=RATE, **kw)


def test_in_time_frames_pass_through_with_no_delay() -> None:
    jb = buffer()
    out = []
    for k in range(50):
        jb.push(frame(k), now_ms=k * 20.0, media_ms=k * 20.0)
        out.append(jb.pop())
    assert [kind for _, kind in out] == ["media"] * 50
    assert [f for f, _ in out] == [frame(k) for k in range(50)]
    st = jb.stats.as_dict(20.0)
    assert st["mean_delay_ms"] == 0.0  # nothing waits behind the frame being played
    assert st["held_frames"] == st["concealed_frames"] == st["gap_fill_frames"] == 0


def test_a_late_frame_is_held_for_and_used_not_replaced_by_silence() -> None:
    jb = buffer()
    played: list[tuple[bytes, str]] = []
    for k in range(10):
        jb.push(frame(k), k * 20.0, k * 20.0)
        played.append(jb.pop())
    played.append(jb.pop())  # frame 10 is 30 ms late: this tick has nothing
    for k in range(10, 20):
        jb.push(frame(k), k * 20.0 + 30.0, k * 20.0)
        played.append(jb.pop())
    kinds = [k for _, k in played]
    assert kinds[10] == "concealed"  # not silence: the caller's voice goes on
    media = [f for f, k in played if k == "media"]
    # every caller frame played, in order; the one after the gap cross-faded in (4 ms)
    assert len(media) == 20
    assert media[:10] == [frame(k) for k in range(10)]
    assert media[11:] == [frame(k) for k in range(11, 20)]
    assert media[10][32:] == frame(10)[32:] and media[10][:32] != frame(10)[:32]
    assert jb.stats.held_frames == 1 and jb.stats.lost_frames == 0
    # the concealed frame continues the tone at nearly its level
    conceal_pcm = g711.decode(played[10][0], "mulaw")
    assert pcm_level_dbfs(conceal_pcm) > pcm_level_dbfs(tone(0)) - 3


def test_a_lost_frame_is_concealed_and_skipped() -> None:
    jb = buffer()
    kinds = []
    for k in range(20):
        if k != 7:
            jb.push(frame(k), k * 20.0, k * 20.0)
        if k == 8:
            # frame 8 is here, 7 never came: 7 was lost
            pass
        kinds.append(jb.pop()[1])
    # tick 7: nothing later is here yet, so it holds; tick 8: frame 8 arrived, 7 is lost
    assert jb.stats.lost_frames + jb.stats.held_frames >= 1
    assert kinds.count("concealed") >= 1
    assert "silence" not in kinds
    assert jb.stats.media_frames == 19 - jb.depth


def test_reordered_and_duplicated_frames() -> None:
    jb = buffer(min_ms=40.0)
    order = [0, 1, 3, 2, 4, 4, 5, 6, 6, 7]
    for i, k in enumerate(order):
        jb.push(frame(k), i * 20.0, k * 20.0)
    assert jb.stats.reordered == 1
    assert jb.stats.duplicates == 2
    out = [jb.pop() for _ in range(8)]
    assert [f for f, _ in out] == [frame(k) for k in range(8)]


def test_delay_is_bounded_whatever_the_caller_sends() -> None:
    jb = buffer(max_ms=100.0)
    for k in range(40):  # a burst of 800 ms at once
        jb.push(frame(k), 0.0, k * 20.0)
    assert jb.depth <= 5
    assert jb.stats.overflow_dropped == 35


def test_delay_won_back_only_in_quiet_frames() -> None:
    jb = buffer()
    # a host stall: frames 5-9 (due at 100-180 ms) arrive together at 200 ms
    for k in range(5):
        jb.push(frame(k), k * 20.0, k * 20.0)
        jb.pop()
    for _ in range(5):
        jb.pop()  # held: nothing is lost, the stream is now 100 ms behind
    for k in range(5, 10):
        jb.push(frame(k), 200.0, k * 20.0)
    played = []
    for k in range(10, 200):  # then on time again: loud speech for 3.8 s
        jb.push(frame(k), k * 20.0, k * 20.0)
        played.append(jb.pop()[0])
    assert played[:5] == [frame(k) for k in range(5, 10)]  # nothing dropped
    assert jb.stats.shrunk_frames == 0 and jb.depth == 5  # the delay stays while loud
    for k in range(200, 260):  # quiet: the extra delay is won back in it
        jb.push(frame(k, 5.0), k * 20.0, k * 20.0)
        jb.pop()
    assert jb.stats.shrunk_frames == 5 and jb.depth == 0


def test_sequential_frames_without_media_time_are_never_lost() -> None:
    jb = buffer()
    kinds: list[str] = []
    for k in range(30):
        if k % 7 == 3:  # every 7th frame comes a tick late: that tick is concealed
            kinds.append(jb.pop()[1])
        jb.push(frame(k), k * 20.0)
        kinds.append(jb.pop()[1])
    assert kinds.count("media") == 30 and kinds.count("concealed") == 4
    assert jb.stats.held_frames == 4 and jb.stats.lost_frames == 0


def test_silence_after_conceal_limit_and_before_any_media() -> None:
    jb = buffer(max_ms=100.0)
    # before the first frame: up to max_ms of "wait" (nothing sent), then silence
    assert [jb.pop()[1] for _ in range(6)] == ["wait"] * 5 + ["silence"]
    jb.push(frame(0), 20.0)
    jb.pop()
    # a line without jitter: 60 ms of concealment, then the caller's media has stopped
    assert [jb.pop()[1] for _ in range(5)] == ["concealed"] * 3 + ["silence"] * 2


def test_a_jittery_line_pauses_before_it_gives_up() -> None:
    jb = buffer(max_ms=200.0)
    for k in range(10):  # frames 0-40 ms late: the buffer sees 40 ms of jitter
        jb.push(frame(k), k * 20.0 + (40.0 if k % 2 else 0.0), k * 20.0)
    for _ in range(10):
        jb.pop()
    kinds = [jb.pop()[1] for _ in range(7)]
    # 60 ms concealed, a pause as long as the jitter (2 frames), then silence
    assert kinds == ["concealed"] * 3 + ["wait"] * 2 + ["silence"] * 2


def test_concealer_fades_and_cross_fades_back() -> None:
    plc = Concealer(8000, 60.0)
    for k in range(5):
        plc.good(tone(k))
    levels = [pcm_level_dbfs(plc.conceal(80)) for _ in range(6)]  # 10 ms each
    assert levels[0] == pytest.approx(pcm_level_dbfs(tone(0)), abs=2.0)
    assert levels[0] > levels[2] > levels[4]
    back = plc.good(tone(6))
    assert back.shape == (N,)
    # no click: the first sample after the erasure is close to a faded continuation
    assert abs(int(back[0])) < 8000


@pytest.mark.parametrize("bad", [dict(min_ms=50.0, max_ms=40.0), dict(min_ms=-1.0)])
def test_bounds_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="jitter buffer bounds"):
        buffer(**bad)


def test_stream_time_maps_to_call_time_across_pauses() -> None:
    jb = buffer(max_ms=100.0)
    jb.pop()
    jb.pop()  # two ticks of wait before the first frame: the stream starts 40 ms late
    for k in range(3):
        jb.push(frame(k), 40.0 + k * 20.0 + (40.0 if k == 1 else 0.0), k * 20.0)
        jb.pop()
    assert jb.call_ms(0.0) == 40.0 and jb.call_ms(50.0) == 90.0
    kinds = [jb.pop()[1] for _ in range(6)]  # 60 ms concealed, a pause, then silence
    assert kinds == ["concealed"] * 3 + ["wait"] * 2 + ["silence"]
    # stream: 3 media + 3 concealed frames (120 ms), 2 waits, then silence from 120 ms on
    assert jb.call_ms(110.0) == 150.0
    assert jb.call_ms(120.0) == 120.0 + 80.0


def test_call_time_maps_back_to_the_callers_media_time() -> None:
    jb = buffer()
    for k in range(5):
        jb.push(frame(k), k * 20.0, k * 20.0)
        jb.pop()
    jb.pop()  # frame 5 is late: held one tick, so from here on 20 ms behind
    for k in range(5, 10):
        jb.push(frame(k), k * 20.0 + 30.0, k * 20.0)
        jb.pop()
    assert jb.media_ms(60.0) == 60.0  # before the hold: no delay
    assert jb.media_ms(160.0) == 140.0  # frame 7 was played at tick 8
