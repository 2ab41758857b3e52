"""The documentation works: every Python example in docs/ runs, and every relative link in every
Markdown file of the project resolves to a file inside the repository."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md"))

#: Folders that hold other people's Markdown (dependencies, caches), not ours.
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    ".fhir-cache",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "dist",
    "build",
    ".hypothesis",
}

_FENCE = re.compile(r"^(```|~~~)([^\n]*)\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)


def _markdown_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        found += [Path(folder) / f for f in sorted(files) if f.endswith(".md")]
    return found


def _python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block. A block fenced ```python no-run is a sketch
    that needs what a test cannot have (a live EHR, a private key) and says so in its fence."""
    return [
        (text.count("\n", 0, match.start(3)) + 1, match.group(3))
        for match in _FENCE.finditer(text)
        if match.group(2).strip().lower() in {"python", "py"}
    ]


def _relative_targets(text: str) -> list[str]:
    prose = _INLINE_CODE.sub("", _FENCE.sub("", text))
    targets = _LINK.findall(prose) + _REFERENCE_LINK.findall(prose)
    return [t for t in targets if not urlsplit(t).scheme and not t.startswith("#")]


@pytest.mark.parametrize(
    "doc", [d for d in DOCS if _python_blocks(d.read_text())], ids=lambda d: d.name
)
def test_python_examples_run(doc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Python block of a document runs, in order, in one namespace, from the repository root."""
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {"__name__": f"docs_{doc.stem.replace('-', '_')}"}
    for line, code in _python_blocks(doc.read_text()):
        compiled = compile(code, f"{doc.relative_to(ROOT)}:{line}", "exec")
        exec(compiled, namespace)


def _broken_links(root: Path) -> list[str]:
    """``file: target`` of every relative link under ``root`` that is missing or leaves ``root``."""
    broken: list[str] = []
    for markdown in _markdown_files(root):
        for target in _relative_targets(markdown.read_text()):
            path = unquote(urlsplit(target).path)
            base = root if path.startswith("/") else markdown.parent
            resolved = (base / path.lstrip("/")).resolve()
            if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
                broken.append(f"{markdown.relative_to(root)}: {target}")
    return broken


def test_relative_links_resolve_inside_the_repository() -> None:
    """No Markdown file links to a missing file or to anything outside the repository."""
    assert _broken_links(ROOT) == []


def test_broken_and_escaping_links_are_found(tmp_path: Path) -> None:
    """A link to a missing file and one leaving the tree are reported; a good one is not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "outside.md").write_text("")
    (tmp_path / "docs" / "good.md").write_text("[up](../outside.md) [self](good.md#top)")
    (tmp_path / "docs" / "bad.md").write_text(
        "[gone](missing.md) [design](../../outside/DESIGN.md)"
    )
    assert _broken_links(tmp_path) == [
        "docs/bad.md: missing.md",
        "docs/bad.md: ../../outside/DESIGN.md",
    ]


def test_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    """The link extraction finds inline and reference links and skips code and web addresses."""
    text = (
        "See [design](../outside/DESIGN.md) and [site](https://example.org/x.md).\n"
        "`[not](a-link.md)`\n\n```\n[also not](b.md)\n```\n[ref]: docs/client.md\n"
    )
    assert _relative_targets(text) == ["../outside/DESIGN.md", "docs/client.md"]
