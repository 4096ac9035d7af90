from hypothesis import given
from hypothesis import strategies as st

from voice_server_moshi._queue import EventQueue
from voice_server_moshi.capabilities import Capabilities
from voice_server_moshi.events import AudioChunk, Connected, Disconnected, Error, Transcript
from voice_server_moshi.formats import AudioFormat

FMT = AudioFormat()


def make(kind: str):  # type: ignore[no-untyped-def]
    return {
        "audio": AudioChunk(audio=b"\x00\x00", format=FMT),
        "text": Transcript(role="agent", text="x"),
        "error": Error(code="e", message="m", fatal=False),
        "fatal": Error(code="e", message="m", fatal=True),
    }[kind]


@given(
    size=st.integers(min_value=1, max_value=8),
    kinds=st.lists(st.sampled_from(["audio", "text", "error", "fatal"]), max_size=60),
)
def test_bounded_and_lifecycle_never_dropped(size: int, kinds: list[str]) -> None:
    q = EventQueue(size)
    q.put(Connected(session_id="s", capabilities=Capabilities()))
    for k in kinds:
        q.put(make(k))
        fatal = sum(1 for i in q._items if isinstance(i, Error) and i.fatal)
        assert len(q) <= size + 1 + fatal
    q.put(Disconnected(reason="r"))
    items = list(q._items)
    assert isinstance(items[0], Connected)
    assert isinstance(items[-1], Disconnected)
    assert sum(1 for i in items if isinstance(i, Error) and i.fatal) == kinds.count("fatal")


def test_audio_is_dropped_before_other_events() -> None:
    q = EventQueue(3)
    q.put(make("text"))
    q.put(make("audio"))
    q.put(make("audio"))
    q.put(make("text"))
    assert [i.name for i in q._items] == ["transcript", "audio-chunk", "transcript"]
    assert q.dropped == 1 and q.dropped_audio == 1
