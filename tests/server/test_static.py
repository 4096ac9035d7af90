"""Static file lookup for ``serve --static``: index, content types, no escape from root."""

from __future__ import annotations

from pathlib import Path

import pytest

from voice_server_moshi.server.static import StaticFiles


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<html>moshi</html>")
    (root / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("token")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    return root


def test_root_and_assets(site: Path) -> None:
    files = StaticFiles(site)
    index = files.lookup("/")
    assert index is not None and index.body == b"<html>moshi</html>"
    assert index.content_type == "text/html; charset=utf-8"
    js = files.lookup("/assets/app.js")
    assert js is not None and js.content_type.startswith("text/javascript")


@pytest.mark.parametrize("path", ["/../secret.txt", "/assets/../../secret.txt",
                                  "/%2e%2e/secret.txt", "/escape", "/missing.css", "/a\x00b"])
def test_nothing_outside_root_or_missing(site: Path, path: str) -> None:
    assert StaticFiles(site).lookup(path) is None


def test_bad_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        StaticFiles(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no index\.html"):
        StaticFiles(tmp_path)
