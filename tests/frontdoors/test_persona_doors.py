"""Personas (PersonaPlex, ADR 0130) on every front door (ADR 0110): ``serve``, ``serve
--ingress-workers 2`` and ``cluster`` (one replica of two slots: its start is the slow
part) with ``--checkpoint dev-personaplex``, driven by the same raw Kyutai-protocol client
as :mod:`.test_front_doors` with NVIDIA's query parameters (``text_prompt``,
``voice_prompt``, ``seed``): the handshake comes once the prompt is in the row, the
``0x04`` metadata echoes the persona and voice, a persona warmed at start
(``--warm-persona``) comes from the prompt cache, and an unknown voice is refused with
``0x05`` and the reason before a slot is taken. (A persona sent to the Moshi dev
checkpoint: :func:`.test_front_doors.test_a_persona_to_a_moshi_checkpoint_is_refused`.)"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine.persona import NVIDIA_VOICES

from .doors import DOORS, Client, Door, door_id, idle, running, tone

pytestmark = pytest.mark.slow

WARM = "You work for Jerusalem Shakshuka which is a restaurant."
MODEL = ["--checkpoint", "dev-personaplex", "--warm-persona", WARM]
#: The cluster with one replica (two slots): the persona path is the same per replica.
EXTRA = {"cluster": ["--replicas", "1", "--slots", "2"]}


@pytest.fixture(scope="module", params=list(DOORS), ids=door_id)
def door(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    with running(request.param, tmp_path_factory.mktemp("pdoor"), model=MODEL,
                 extra=EXTRA.get(request.param)) as d:
        yield d


async def test_a_persona_call_gets_its_handshake_audio_and_metadata(door: Door) -> None:
    cap = await idle(door)
    assert cap["persona"] == {"prompts": True, "family": "personaplex",
                               "voices": sorted(NVIDIA_VOICES), "default_voice": "NATF2",
                               "checkpoint": "dev-personaplex"}
    text = f"You are a calm support agent on the {door.name} door."  # cold: never seen
    c = Client(door.url + "?" + urlencode(
        {"text_prompt": text, "voice_prompt": "NATM1.pt", "seed": "7"}))
    await c.connect()
    md = c.metadata
    assert c.first == b"\x00" + bytes(8)
    assert md["persona"] == f"<system> {text} <system>" and md["voice"] == "NATM1"
    assert md["persona_cached"] is False
    assert (md["text_seed"], md["audio_seed"]) == (7, 7)  # NVIDIA's one seed
    await c.talk(tone(1, 12))
    await c.until(lambda: len(c.of(1)) >= 10)  # the agent's audio
    await c.close()
    assert c.close_code == 1000 and not c.errors()
    await idle(door)
    warm = Client(door.url + "?" + urlencode({"text_prompt": WARM}))  # the default voice
    await warm.connect()
    assert (warm.metadata["voice"], warm.metadata["persona_cached"]) == ("NATF2", True)
    assert warm.metadata["persona"] == f"<system> {WARM} <system>"
    await warm.talk(tone(2, 6))
    await warm.until(lambda: len(warm.of(1)) >= 4)
    await warm.close()
    assert warm.close_code == 1000 and not warm.errors()
    async with httpx.AsyncClient(base_url=door.http, trust_env=False, timeout=10) as http:
        metrics = (await http.get("/metrics")).text
    assert "moshi_engine_prompt_" in metrics


async def test_an_unknown_voice_is_refused_with_the_reason(door: Door) -> None:
    await idle(door)
    c = Client(door.url + "?text_prompt=Hello&voice_prompt=..%2F..%2Fetc%2FNOPE.pt")
    await c.connect()
    await c.closed(10)
    assert c.first[:1] == b"\x05" and c.close_code == 1008
    assert c.errors() == ["bad request: unknown voice 'NOPE'; this engine has: "
                          + ", ".join(sorted(NVIDIA_VOICES))]
    await idle(door)  # no slot was taken
