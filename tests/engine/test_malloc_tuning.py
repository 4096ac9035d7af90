"""The engine keeps freed memory for the next tick on glibc, unless the operator set
glibc's malloc variables (ADR 0150). Torch-free."""

from __future__ import annotations

import platform

import pytest

from voice_server_moshi.engine import malloc_tuning


def test_glibc_takes_both_thresholds_once() -> None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    first = malloc_tuning.hold_freed_memory()
    assert malloc_tuning.hold_freed_memory() is first  # once per process
    assert malloc_tuning._apply() is True


@pytest.mark.parametrize("name, value", [("MALLOC_MMAP_THRESHOLD_", "1048576"),
                                         ("MALLOC_TRIM_THRESHOLD_", "0"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_the_operators_own_malloc_settings_win(monkeypatch: pytest.MonkeyPatch, name: str,
                                               value: str) -> None:
    monkeypatch.setenv(name, value)
    assert malloc_tuning._apply() is False


def test_other_glibc_tunables_do_not_stop_it(monkeypatch: pytest.MonkeyPatch) -> None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert malloc_tuning._apply() is True
