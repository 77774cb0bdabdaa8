"""The README's generated sections: each between two markers, written from the code's one table.

`python -m kfp_lightning.pipelines.parameters` and `python -m kfp_lightning.pipelines.platforms`
rewrite theirs; a test compares each with what the code gives, so a stale README fails it.
"""

from __future__ import annotations

from pathlib import Path

from kfp_lightning.components.common.files import atomic_write_text

README = Path(__file__).resolve().parents[1] / "README.md"


def with_section(readme: str, start: str, end: str, body: str) -> str:
    """`readme` with the text between the markers `start` and `end` replaced by `body`.

    Raises:
        ValueError: A marker is missing.
    """
    before, found, rest = readme.partition(start)
    _, found_end, after = rest.partition(end)
    if not (found and found_end):
        raise ValueError(f"README.md lacks {start} ... {end}")
    return f"{before}{start}\n{body}\n{end}{after}"


def rewrite_section(start: str, end: str, body: str) -> Path:
    """Rewrites the README's section between `start` and `end` (atomically); returns its path."""
    atomic_write_text(README, with_section(README.read_text(), start, end, body))
    return README
