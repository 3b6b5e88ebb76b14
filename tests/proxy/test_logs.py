"""proxy/logs.py: the text format, and stderr written once per turn of the event loop."""

from __future__ import annotations

import asyncio
import io
import logging

from proxy.logs import TextFormatter, TurnHandler


class Writes(io.StringIO):
    """A stream that remembers each write it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def handler_on(stream: Writes) -> tuple[logging.Logger, TurnHandler]:
    handler = TurnHandler()
    handler.setStream(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test-turn-{id(stream)}")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger, handler


def test_the_lines_of_one_loop_turn_go_out_in_one_write_after_it() -> None:
    stream = Writes()
    logger, _ = handler_on(stream)

    async def serve() -> list[str]:
        for n in range(3):
            logger.info("line %d", n)
        during = list(stream.writes)  # nothing yet: the turn is still under way
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return during

    assert asyncio.run(serve()) == []
    assert stream.writes == ["line 0\nline 1\nline 2\n"]


def test_without_a_loop_a_line_is_written_at_once_with_any_left_pending() -> None:
    stream = Writes()
    logger, _ = handler_on(stream)
    logger.info("at start-up")
    assert stream.writes == ["at start-up\n"]

    loop = asyncio.new_event_loop()

    def log_as_the_loop_stops() -> None:
        loop.stop()  # the loop ends this turn, before the flush the line below schedules
        logger.info("in a loop")

    loop.call_soon(log_as_the_loop_stops)
    loop.run_forever()
    loop.close()
    assert stream.getvalue() == "at start-up\n"
    logger.info("after the loop")
    assert stream.getvalue() == "at start-up\nin a loop\nafter the loop\n"


def test_the_text_time_is_loggings_own() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    for created in (1_700_000_000.123, 1_700_000_000.999, 1_700_000_001.5):
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert TextFormatter().formatTime(record) == logging.Formatter().formatTime(record)
