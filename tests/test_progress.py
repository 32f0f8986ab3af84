"""The progress line: drawn and erased on a terminal, silent elsewhere."""

from __future__ import annotations

import io

from replay.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress("replaying", 100, stream=out, delay=0, interval=0) as p:
        for i in range(100):
            p.update(i)
    assert out.getvalue() == ""


def test_drawn_then_erased_on_a_terminal() -> None:
    out = Tty()
    with Progress("replaying", 200, stream=out, delay=0, interval=0) as p:
        p.update(50)
        p.update(100, "42 records")
    text = out.getvalue()
    assert "\rreplaying:  25.0%" in text and "50.0%" in text and "(42 records)" in text
    assert text.endswith("\r")  # the last draw is blanked out
    last = text.rsplit("\r", 2)[-2]
    assert last.strip() == ""


def test_not_before_the_delay() -> None:
    out = Tty()
    with Progress("replaying", 10, stream=out, delay=3600) as p:
        p.update(5)
    assert out.getvalue() == ""


def test_without_a_total() -> None:
    out = Tty()
    p = Progress("reading", stream=out, delay=0, interval=0)
    p.update(1234)
    assert "reading: 1234" in out.getvalue()
    p.close()
