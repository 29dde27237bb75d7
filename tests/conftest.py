"""Shared pytest setup for every layer of tests.

1. Markers by folder: a test under ``tests/unit`` is marked ``unit``, under ``tests/sim``
   ``sim``, and so on (``-m unit`` selects a layer; see style.md §5 for the layers).
2. Log check (after S3QL's ``pytest_checklogs``): a test fails (an error at teardown) if
   anything logs a WARNING or above during it, unless the test declared it:

       def test_bad_peer(expect_log):
           expect_log(r"dropping connection event=auth_failed")   # regex, WARNING
           expect_log(r"handler .* failed", logging.ERROR)         # another level
           ...

   An expected pattern must also appear at least once, so ``expect_log`` doubles as an
   assertion that the warning was logged. A test that logs freely (a chaos run) takes
   ``@pytest.mark.allow_warnings``. A test that already failed is not checked again (its
   captured log is in the report anyway).
3. ``anyio_backend``: async tests marked ``@pytest.mark.anyio`` run on asyncio.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfs import ratelog

_LAYERS = ("unit", "sim", "property", "integration", "fuse", "failures", "slow")
_TESTS_DIR = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_warnings: the test may log WARNING and ERROR records unchecked"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            layer = item.path.relative_to(_TESTS_DIR).parts[0]
        except ValueError:
            continue
        if layer in _LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class _Expected:
    pattern: re.Pattern[str]
    level: int
    seen: bool = False


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_EXPECTED_KEY = pytest.StashKey[list[_Expected]]()
_FAILED_KEY = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED_KEY] = True
    return report


@pytest.fixture(autouse=True)
def _check_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    # Autouse fixtures are set up first and torn down last, so records logged while other
    # fixtures shut down (servers closing) are checked too.
    expected: list[_Expected] = []
    request.node.stash[_EXPECTED_KEY] = expected
    ratelog.forget_all()  # each test sees the first of its own rate-limited lines
    collector = _Collector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield
    finally:
        root.removeHandler(collector)
    if request.node.get_closest_marker("allow_warnings"):
        return
    if request.node.stash.get(_FAILED_KEY, False):
        return
    unexpected = []
    for record in collector.records:
        message = record.getMessage()
        matches = [e for e in expected if e.level == record.levelno and e.pattern.search(message)]
        for e in matches:
            e.seen = True
        if not matches:
            unexpected.append(f"{record.levelname} {record.name}: {message}")
    missing = [f"{logging.getLevelName(e.level)} /{e.pattern.pattern}/" for e in expected]
    missing = [m for m, e in zip(missing, expected, strict=True) if not e.seen]
    problems = []
    if unexpected:
        problems.append("unexpected log records:\n  " + "\n  ".join(unexpected))
    if missing:
        problems.append("expected log records never logged:\n  " + "\n  ".join(missing))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def expect_log(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``expect_log(regex, level=logging.WARNING)``: declare a record this test must log."""
    expected = request.node.stash[_EXPECTED_KEY]

    def expect(pattern: str, level: int = logging.WARNING) -> None:
        expected.append(_Expected(re.compile(pattern), level))

    return expect
