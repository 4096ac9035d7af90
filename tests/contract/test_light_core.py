"""A voice-server that only talks to a remote Moshi server must not need torch."""

import subprocess
import sys
import textwrap


def test_remote_path_imports_without_torch_or_moshi() -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "moshi", "sentencepiece", "matplotlib",
                                          "livekit", "pipecat"):
                    raise ImportError(f"{name} must not be imported by the remote path")
                return None

        sys.meta_path.insert(0, Block())
        import voice_server_moshi
        from voice_server_moshi.registry import load_registry
        import voice_server_moshi.audio.g711, voice_server_moshi.audio.resample
        import voice_server_moshi.moshi.protocol, voice_server_moshi.moshi.remote
        reg = load_registry(blocked=[])
        adapter = reg.create_adapter("moshi", {"url": "ws://127.0.0.1:9/api/chat"})
        for name in ("openai-realtime", "elevenlabs", "phonic"):
            assert name in reg.adapters, name
        print(type(adapter).__name__)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MoshiAdapter"
