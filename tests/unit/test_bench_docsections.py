"""Regenerating docs/benchmarks.md keeps the sections written by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from meshlens.bench.docsections import is_generated, keep_hand_written, split_sections

ROOT = Path(__file__).resolve().parents[2]
FIXED = ("Summary", "Where the cost goes")
NUMBERED = ("Connection churn", "Start-up")

OLD = """# benchmarks

intro

## Summary

old table

## 1. Connection churn

old churn

## 2. Start-up

old start-up

## Per-feature benchmarks

- HTTP: by hand

```
## not a heading: inside a code block
```

## Which commit

- notes
"""

NEW = """# benchmarks

intro

## Summary

new table

## 1. Start-up

new start-up
"""


def test_split_sections_keeps_every_line() -> None:
    head, sections = split_sections(OLD)
    assert head == "# benchmarks\n\nintro\n\n"
    assert [t for t, _ in sections] == [
        "Summary",
        "1. Connection churn",
        "2. Start-up",
        "Per-feature benchmarks",
        "Which commit",
    ]
    assert head + "".join(body for _, body in sections) == OLD
    assert "## not a heading" in dict(sections)["Per-feature benchmarks"]


def test_generated_titles_whatever_their_number() -> None:
    assert is_generated("Summary", FIXED, NUMBERED)
    assert is_generated("7. Connection churn", FIXED, NUMBERED)
    assert not is_generated("Connection churn", FIXED, NUMBERED)
    assert not is_generated("1. Per-feature benchmarks", FIXED, NUMBERED)
    assert not is_generated("Which commit", FIXED, NUMBERED)


def test_hand_written_sections_follow_the_new_text() -> None:
    text, kept = keep_hand_written(OLD, NEW, FIXED, NUMBERED)
    assert kept == ["Per-feature benchmarks", "Which commit"]
    assert text.startswith(NEW.rstrip("\n") + "\n\n## Per-feature benchmarks\n")
    assert "new start-up" in text and "old" not in text
    assert text.endswith("## Which commit\n\n- notes\n")
    assert "## not a heading: inside a code block" in text
    # a second regeneration changes nothing: nothing is kept twice
    again, kept_again = keep_hand_written(text, NEW, FIXED, NUMBERED)
    assert again == text and kept_again == kept


def test_nothing_to_keep_leaves_the_new_text() -> None:
    assert keep_hand_written(NEW, NEW, FIXED, NUMBERED) == (NEW, [])
    assert keep_hand_written("", NEW, FIXED, NUMBERED) == (NEW, [])


def test_the_real_document_keeps_its_hand_written_sections(tmp_path: Path) -> None:
    """bench/run.py --from-json --out over the committed document: the generated
    sections are made again and every other section survives, word for word."""
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    _, sections = split_sections(doc)
    hand = [
        (t, b)
        for t, b in sections
        if t.startswith(("Network-health", "Per-feature", "Which commit"))
    ]
    assert len(hand) == 3
    out = tmp_path / "benchmarks.md"
    out.write_text(doc)
    results = tmp_path / "results.json"
    env = {"date": "d", "kernel": "k", "cpu": "c", "cores": 2, "memory_gb": 1, "python": "3"}
    results.write_text(json.dumps({"environment": {**env, "commit": "0000000"}}))
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--from-json",
            str(results),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    _, regenerated = split_sections(out.read_text())
    bodies = dict(regenerated)
    for title, body in hand:
        assert bodies[title].rstrip("\n") == body.rstrip("\n")
