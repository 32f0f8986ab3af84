"""The summary package's layout: what it re-exports, and no import cycle with the timeline."""

from __future__ import annotations

import ast
import pathlib

import replay.engine
import replay.summary
from replay.summary import analysis, model, text

REPLAY = pathlib.Path(replay.summary.__file__).parent.parent


def _top_level_replay_imports(path: pathlib.Path) -> set[str]:
    """The ``replay`` modules a file imports when it is loaded (not inside functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("replay"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("replay")}
    return found


def test_the_package_re_exports_each_name_from_its_one_home() -> None:
    homes = (model, analysis, text)
    for name in replay.summary.__all__:
        obj = getattr(replay.summary, name)
        owners = [m for m in homes if getattr(m, name, None) is obj]
        assert owners, name
    # What the rest of the tree imports from replay.summary.
    for name in ("FAILED_ENDS", "Activity", "Flow", "Summary", "format_summary",
                 "summarize_journal", "main"):
        assert name in replay.summary.__all__, name


def test_timeline_needs_only_the_model_and_the_summary_loads_it_lazily() -> None:
    assert _top_level_replay_imports(REPLAY / "timeline.py") == {"replay.summary.model"}
    for path in sorted((REPLAY / "summary").glob("*.py")):
        assert "replay.timeline" not in _top_level_replay_imports(path), path.name
    assert "replay.summary" not in str(_top_level_replay_imports(REPLAY / "summary" / "model.py"))


def test_the_replay_report_and_the_summary_have_distinct_formatter_names() -> None:
    assert not hasattr(replay.engine, "format_summary") and not hasattr(replay.engine, "_wall")
    assert callable(replay.engine.format_replay_report)
    assert not hasattr(text, "_wall") and callable(text._utc_wall)
