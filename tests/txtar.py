"""A tiny reader for txtar archives (the captured-traffic fixtures).

A txtar file is a free-text comment followed by sections, each starting with a
line `-- NAME --`. The fixtures live outside the repository, in
`../shared/fixtures/aibridge` relative to the repo root; `FIXTURES` is None
when that folder is absent, and tests that need it skip.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^-- (.+?) --[ \t]*$", re.MULTILINE)

_REPO_ROOT = Path(__file__).resolve().parents[1]
_FIXTURES_DIR = _REPO_ROOT.parent / "shared" / "fixtures" / "aibridge"
FIXTURES: Path | None = _FIXTURES_DIR if _FIXTURES_DIR.is_dir() else None

SKIP_REASON = f"captured fixtures not found at {_FIXTURES_DIR}"


def load(path: Path | str) -> tuple[str, dict[str, str]]:
    """Returns (comment, {section name: section text})."""
    text = Path(path).read_text(encoding="utf-8")
    headers = list(_HEADER.finditer(text))
    if not headers:
        return text, {}
    comment = text[: headers[0].start()]
    sections: dict[str, str] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        body_start = header.end() + 1  # skip the header's newline
        body_end = following.start() if following is not None else len(text)
        sections[header.group(1)] = text[body_start:body_end]
    return comment, sections


def split_http(section: str) -> tuple[int, str] | None:
    """For a section holding a whole HTTP response: (status code, body). None otherwise."""
    if not section.startswith("HTTP/"):
        return None
    head, _, body = section.replace("\r\n", "\n").partition("\n\n")
    status_line = head.split("\n", 1)[0]
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, body
