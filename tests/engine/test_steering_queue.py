"""The steering queue and text layout on their own (no model): pacing rules, cancel races."""

from __future__ import annotations

from voice_server_moshi.engine.steering import CHOOSE, SlotSteering, SteeringSpec, StepPlan
from voice_server_moshi.engine.steering_layout import Pacing, timed_actions, words_of

PAD, EPAD = 3, 0


class Tok:
    """One token per character, ids 10 + ord(c) % 100; '#' is unknown (EPAD's id)."""

    def encode(self, text: str) -> list[int]:
        return [0 if c == "#" else 10 + ord(c) % 100 for c in text]


def spec() -> SteeringSpec:
    return SteeringSpec(Tok(), 128, PAD, EPAD, (0, 1, 1), 1, Pacing())


def step(q: SlotSteering, model: int = PAD) -> StepPlan | None:
    plan = q.plan(lambda: PAD)
    actual = None
    if plan is not None and plan.text == CHOOSE:
        actual = EPAD if model != PAD else PAD
    q.commit(actual)
    return plan


def test_words_budgets_and_unknown_characters() -> None:
    words = words_of("hi there, you#. ##", Tok(), text_card=128,
                     reserved=frozenset((PAD, EPAD)), pacing=Pacing())
    assert [w.text for w in words] == ["hi", "there,", "you#."]  # "##" has nothing sayable
    assert [len(w.tokens) for w in words] == [2, 6, 4]  # '#' dropped, never forced as EPAD
    assert words[1].frames == 7 + 2 and words[0].max_pads == 0  # comma pause; 3 chars
    acts = timed_actions(words[:1], 10, start=2, end=8, pad=PAD, epad=EPAD)
    assert acts[:2] == [PAD, PAD] and acts[2] == EPAD and len(acts) == 10


def test_the_model_paces_words_within_their_budget() -> None:
    # "a," has 2 tokens and a budget of 5 frames (3 characters, a comma pause): up to 2 PADs.
    q = SlotSteering(spec())
    q.say_text("a, cd")
    slow = [step(q, model=PAD) for _ in range(10)]  # the model would stay silent
    assert [p.text if p else None for p in slow] == [
        EPAD, 107, 54, CHOOSE, CHOOSE, EPAD, 109, 10, None, None]
    q2 = SlotSteering(spec())
    q2.say_text("a, cd")
    fast = [step(q2, model=42) for _ in range(8)]  # the model wants to go on at once
    assert [p.text if p else None for p in fast] == [
        EPAD, 107, 54, CHOOSE, 109, 10, None, None]
    assert q.forced_steps == 8 and q2.forced_steps == 6


def test_a_cancel_while_a_step_runs_is_reported_as_cancelled() -> None:
    q = SlotSteering(spec())
    rid = q.say_text("hello there")
    marks = []
    for k in range(5):
        q.plan(lambda: PAD)
        if k == 1:
            assert q.cancel() == [rid]  # from the event loop, while the step runs
        q.commit(None)
        marks += [(e.request_id, e.status) for e in q.output_marks()[1]]  # one per output
    assert marks == [(rid, "started"), (rid, "cancelled")]  # never "finished"
    assert not q.active
