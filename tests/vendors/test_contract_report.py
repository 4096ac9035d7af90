"""Rendering of the parity report (voice_server_moshi.testing.contract.report)."""

from __future__ import annotations

import json
from pathlib import Path

from voice_server_moshi.testing.contract.report import main, render

RECORD = {
    "providers": ["a", "b"],
    "capabilities": {"a": {"interruption": True}, "b": {"interruption": False}},
    "scenarios": {
        "peer-closes 1011": {"a": {"status": "ok", "sequence": ["connected", "x|y"],
                                   "note": "ws://127.0.0.1:41234/x"}},
        "peer-closes": {"b": {"status": "n/a", "sequence": [], "note": "never closes"}},
        "connect": {"a": {"status": "ok", "sequence": ["connected"], "note": ""},
                    "b": {"status": "FAILED", "sequence": ["connected"], "note": "boom"}},
    },
}


def test_render_table() -> None:
    text = render(RECORD)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| flag | a | b |"
    assert "| `interruption` | yes | no |" in rows
    scen = [r for r in rows if r.startswith(("| connect", "| peer-closes"))]
    assert scen[0].startswith("| connect |")  # report order, not record order
    assert "**FAILED** (boom)" in scen[0]
    assert scen[1].startswith("| peer-closes 1011 |")
    assert "`x\\|y`" in scen[1] and "127.0.0.1:PORT" in scen[1]
    assert "n/a (peer cannot): never closes" in scen[1]
    assert not any(r.startswith("| peer-closes |") for r in rows)
    assert "1 cell(s) marked FAILED broke the parity rules" in text


def test_main_from_json(tmp_path: Path) -> None:
    src = tmp_path / "r.json"
    src.write_text(json.dumps(RECORD))
    out = tmp_path / "out.md"
    assert main(["--from-json", str(src), "--out", str(out)]) == 0
    assert out.read_text() == render(RECORD)


def test_main_without_suite(tmp_path: Path) -> None:
    assert main(["--suite", str(tmp_path / "missing"), "--out", str(tmp_path / "x.md")]) == 2
