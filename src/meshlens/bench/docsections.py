"""docs/benchmarks.md is part generated (bench/run.py) and part written by hand
(per-feature results, which commit measured what). Regenerating it must not
drop the hand-written part: these helpers carry every `## ` section the
generator does not make over into the new text."""

from __future__ import annotations

import re
from collections.abc import Iterable


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first `## ` heading, and (heading title, whole
    section text) for each `## ` section in order. Lines inside fenced code
    blocks are never headings."""
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append((line[3:].strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    return "".join(head), [(title, "".join(body)) for title, body in sections]


def is_generated(title: str, fixed: Iterable[str], numbered: Iterable[str]) -> bool:
    """Whether the generator makes a section of this title: one of `fixed`, or
    "<n>. <title>" for one of `numbered` (numbers follow whichever ran)."""
    if title in set(fixed):
        return True
    m = re.fullmatch(r"\d+\. (.+)", title)
    return m is not None and m.group(1) in set(numbered)


def keep_hand_written(
    old: str, new: str, fixed: Iterable[str], numbered: Iterable[str]
) -> tuple[str, list[str]]:
    """`new` followed by every section of `old` the generator does not make and
    `new` does not already hold, in their old order; and those sections' titles."""
    fixed, numbered = list(fixed), list(numbered)
    _, new_sections = split_sections(new)
    have = {title for title, _ in new_sections}
    _, old_sections = split_sections(old)
    kept = [
        (title, body)
        for title, body in old_sections
        if title not in have and not is_generated(title, fixed, numbered)
    ]
    if not kept:
        return new, []
    parts = [new.rstrip("\n") + "\n\n"]
    parts += [body.rstrip("\n") + "\n\n" for _, body in kept]
    return "".join(parts).rstrip("\n") + "\n", [title for title, _ in kept]
