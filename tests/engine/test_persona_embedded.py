"""Personas through the embedded transport (dev-personaplex, CPU): the settings' persona
and voice are prefilled before the session opens, changed mid-call, and refused with a
reason by a model not trained for them; the remote transport has no mid-call change."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("moshi")

from voice_server_moshi.engine import shared
from voice_server_moshi.engine.persona import PersonaError
from voice_server_moshi.errors import ConnectError
from voice_server_moshi.moshi.embedded import EmbeddedTransport
from voice_server_moshi.moshi.remote import RemoteTransport
from voice_server_moshi.moshi.settings import MoshiSettings

FRAME = np.zeros(1920, dtype=np.float32)


@pytest.fixture(scope="module", autouse=True)
def _engines() -> Iterator[None]:
    yield
    shared.shutdown_all()


@pytest.mark.slow
async def test_settings_persona_is_in_the_row_when_the_session_opens() -> None:
    t = EmbeddedTransport(MoshiSettings(checkpoint="dev-personaplex", device="cpu", slots=2,
                                        persona="You answer for Acme.", voice="NATM2"))
    await t.open("persona-call")
    try:
        assert t.call is not None and t.call.slot is not None
        run = t.call.slot.prompt_run
        assert run is not None and run.done.is_set() and t.call.slot.prompted
        assert run.prompt.text == "<system> You answer for Acme. <system>"
        assert run.prompt.voice == "NATM2"
        for _ in range(3):
            await t.send_frame(FRAME)
        await t.set_persona("You answer for Acme's billing team.", "NATF3")
        run2 = t.call.slot.prompt_run
        assert run2 is not run and run2.done.is_set() and run2.prompt.voice == "NATF3"
    finally:
        await t.close()


@pytest.mark.slow
async def test_moshi_refuses_the_persona_with_a_reason() -> None:
    t = EmbeddedTransport(MoshiSettings(checkpoint="dev", device="cpu", persona="Be brief."))
    with pytest.raises(ConnectError, match=r"persona refused.*not trained for persona"):
        await t.open("refused")


async def test_remote_transport_cannot_change_a_running_persona() -> None:
    t = RemoteTransport(MoshiSettings(url="ws://127.0.0.1:9/api/chat"))
    assert t.persona_refusal is not None and "NVIDIA's protocol" in t.persona_refusal
    with pytest.raises(PersonaError, match="no message for it"):
        await t.set_persona("x", None)
