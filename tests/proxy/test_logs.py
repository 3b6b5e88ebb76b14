"""proxy/logs.py: the text format, and stderr written once per turn of the event loop."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging

import pytest

import proxy.observe
from proxy.logs import JsonFormatter, TextFormatter, TurnHandler, direct_handler
from proxy.metrics import Metrics
from proxy.observe import AccessLog, Exchange
from proxy.tracing import NO_SPAN


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


# What a request's line carries, with values that need quoting or are not text.
FIELDS: dict[str, object] = {"request_id": "rid-1", "method": "POST", "path": '/v1/a path"with=odd', "status": 200,
                             "latency_ms": 1.234, "team": None, "cache": "", "tokens": 7}
NAMES = (f"test-direct-{n}" for n in itertools.count())


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_line_made_without_a_record_is_the_line_of_the_record(formatter: TextFormatter | JsonFormatter) -> None:
    for created, level in itertools.product((1_700_000_000.0, 1_700_000_000.9996, 1_700_000_061.5),
                                            (logging.INFO, logging.DEBUG)):
        record = logging.LogRecord("embedgate.access", level, __file__, 0, "request", (), None)
        record.created, record.msecs = created, created % 1 * 1000  # as the access log sets them
        record.fields = FIELDS
        assert formatter.line("embedgate.access", level, created, "request", FIELDS) == formatter.format(record)


def hierarchy(formatter: logging.Formatter, level: int = logging.INFO,
              name: str | None = None) -> tuple[logging.Logger, TurnHandler, Writes]:
    """A logger whose records reach one TurnHandler on its parent, as `configure` sets up the root's."""
    parent = logging.getLogger(name or next(NAMES))
    parent.propagate = False
    stream = Writes()
    handler = TurnHandler()
    handler.setStream(stream)  # type: ignore[arg-type]
    handler.setFormatter(formatter)
    handler.setLevel(level)
    parent.handlers = [handler]
    parent.setLevel(logging.DEBUG)
    return logging.getLogger(f"{parent.name}.access"), handler, stream


def test_the_direct_handler_is_found_only_where_nothing_else_would_see_the_record() -> None:
    for formatter in (TextFormatter(), JsonFormatter()):
        logger, handler, _ = hierarchy(formatter)
        assert direct_handler(logger, logging.INFO) == (handler, formatter)
        assert direct_handler(logger, logging.DEBUG) is None  # below the handler's level

    class Own(TextFormatter):
        pass

    logger, _, _ = hierarchy(Own())
    assert direct_handler(logger, logging.INFO) is None  # a subclass may format otherwise

    logger, handler, _ = hierarchy(TextFormatter())
    logger.addHandler(logging.NullHandler())  # a second handler (a test's capture, an operator's file)
    assert direct_handler(logger, logging.INFO) is None

    logger, handler, _ = hierarchy(TextFormatter())
    handler.addFilter(lambda record: True)
    assert direct_handler(logger, logging.INFO) is None

    logger, _, _ = hierarchy(TextFormatter())
    logger.addFilter(lambda record: True)
    assert direct_handler(logger, logging.INFO) is None

    logger, _, _ = hierarchy(TextFormatter())
    logger.setLevel(logging.WARNING)
    assert direct_handler(logger, logging.INFO) is None

    logger, _, _ = hierarchy(TextFormatter())
    logger.propagate = False  # no handler at all: logging's last resort, not ours
    assert direct_handler(logger, logging.INFO) is None


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_the_access_log_writes_the_same_lines_with_or_without_records(
        formatter: TextFormatter | JsonFormatter, monkeypatch: pytest.MonkeyPatch) -> None:
    name = next(NAMES)
    monkeypatch.setattr(proxy.observe.time, "time", lambda: 1_700_000_000.25)  # when each request ended

    def written(records: bool) -> str:
        logger, handler, stream = hierarchy(formatter, logging.DEBUG, name)
        if records:
            handler.addFilter(lambda record: True)  # lets every record through, and turns the direct path off
        assert (direct_handler(logger, logging.INFO) is None) is records
        monkeypatch.setattr(proxy.observe, "ACCESS", logger)

        async def serve() -> None:
            access = AccessLog(3600)
            metrics = Metrics(["m"])
            for n, quiet in enumerate((False, True, False)):  # a probe's line is at DEBUG
                exchange = Exchange(f"rid-{n}", "POST", "/v1/embeddings", 10.0, quiet=quiet, status=200, model="m",
                                    team="t", tokens=3, inputs=1, cache="miss", deployment="d", ended=10.0012)
                exchange.finish(metrics, access, NO_SPAN, False)
            access.flush()
            await asyncio.sleep(0)

        asyncio.run(serve())
        return stream.getvalue()

    direct = written(False)
    assert direct.count("\n") == 3 and "rid-1" in direct and "DEBUG" in direct
    assert direct == written(True)
