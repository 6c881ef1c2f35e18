"""pytest plugin (entry point ``pytest11``): record a test's sockets once, then replay them.

    @pytest.mark.tracesock("captures/http.jsonl")
    def test_fetch(tracesock): ...

The marker (or requesting the ``tracesock`` fixture) runs the test inside
``tracesock.trace(path)`` or ``tracesock.replay(path)``, as ``--tracesock-mode`` says:

* ``once`` (default): record through real sockets when the file does not exist,
  replay it when it does;
* ``none``: replay only; a missing recording fails the test and says how to make one;
* ``all``: record again, overwriting.

Paths are relative to the test file's directory; without one the recording is
``captures/<test module>/<test name>.jsonl`` there. Marker keywords ``check``,
``realtime``, ``ignore`` and ``pids`` go to ``replay()``, ``wall_clock`` to ``trace()``,
``follow_children`` and ``entropy`` to both. While replaying, nothing reaches the
network: a socket that matches no recorded one fails the test with a ReplayError naming
what was asked and what the recording holds. A recording made by a test that failed is deleted, so
that the next run records again rather than replaying the failure.

This module imports only pytest: tracesock's recorder and replay load when a test
uses them (the plugin is loaded in every pytest run of an environment that has
tracesock installed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .record.tracing import Tracing
    from .replay.session import Replay

MODES = ("once", "none", "all")
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_MARKER = ("tracesock(path=None, *, check='concat', realtime=False, follow_children=False, "
           "ignore=(), entropy=True, wall_clock=False, pids=True): "
           "record this test's sockets into the JSONL trace at path (relative to the test "
           "file) or replay them from it, as --tracesock-mode says; with follow_children, "
           "those of the Python child processes too")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tracesock", "tracesock: record and replay socket calls")
    group.addoption("--tracesock-mode", dest="tracesock_mode", default=None, choices=MODES,
                    help="once: record when the recording is missing, else replay "
                         "(default); none: replay only; all: record again")
    parser.addini("tracesock_mode", "default for --tracesock-mode", default="once")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


class TracesockRun:
    """What the ``tracesock`` fixture gives: the mode in effect and its context."""

    def __init__(self, mode: str, path: Path, *, replay: Replay | None = None,
                 tracing: Tracing | None = None) -> None:
        self.mode = mode  # "record" or "replay"
        self.path = path
        self.replay = replay
        self.tracing = tracing

    @property
    def recording(self) -> bool:
        return self.mode == "record"

    def __repr__(self) -> str:
        return f"<TracesockRun {self.mode} {self.path}>"


def _recording_path(request: pytest.FixtureRequest, given: Any) -> Path:
    base = Path(request.path).parent
    if given is not None:
        return base / Path(os.fspath(given))
    name = re.sub(r"[^\w.-]+", "_", request.node.name).strip("_") or "test"
    return base / "captures" / Path(request.path).stem / f"{name}.jsonl"


@pytest.fixture
def tracesock(request: pytest.FixtureRequest) -> Iterator[TracesockRun]:
    """Record (``trace``) or replay (``replay``) every socket the test creates."""
    from .errors import TracesockError

    marker = request.node.get_closest_marker("tracesock")
    args: tuple[Any, ...] = marker.args if marker else ()
    options = dict(marker.kwargs) if marker else {}
    path = _recording_path(request, args[0] if args else options.pop("path", None))
    unknown = set(options) - {"check", "realtime", "follow_children", "ignore", "entropy",
                              "wall_clock", "pids"}
    if unknown:
        pytest.fail(f"tracesock marker: unknown keyword(s) {', '.join(sorted(unknown))} "
                    "(known: path, check, realtime, follow_children, ignore, entropy, "
                    "wall_clock, pids)", pytrace=False)
    mode = request.config.getoption("tracesock_mode") or request.config.getini("tracesock_mode")
    if mode not in MODES:
        pytest.fail(f"tracesock_mode must be one of {', '.join(MODES)}, not {mode!r}",
                    pytrace=False)
    if mode == "all" or (mode == "once" and not path.exists()):
        yield from _record(request, path, {k: options[k] for k in options
                                           if k in ("follow_children", "entropy", "wall_clock")})
        return
    if not path.exists():
        pytest.fail(f"tracesock: no recording at {path}; --tracesock-mode=none only replays: "
                    "record it first with --tracesock-mode=once (or all)", pytrace=False)
    from .replay.session import replay

    try:
        options.pop("wall_clock", None)  # what was recorded says
        with replay(path, **options) as rp:
            yield TracesockRun("replay", path, replay=rp)
            if _failed(request):
                rp.skip_final_checks()  # what went wrong was already reported
    except TracesockError as exc:
        pytest.fail(f"tracesock replay of {path}: {exc}", pytrace=False)


def _record(request: pytest.FixtureRequest, path: Path,
            options: dict[str, Any]) -> Iterator[TracesockRun]:
    from .record.tracing import trace

    path.parent.mkdir(parents=True, exist_ok=True)
    with trace(str(path), argv=[request.node.nodeid], **options) as tracing:
        yield TracesockRun("record", path, tracing=tracing)
    if _failed(request):
        path.unlink(missing_ok=True)  # never replay a failed run: record again next time


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture(autouse=True)
def _tracesock_marker(request: pytest.FixtureRequest) -> None:
    # The marker alone is enough: it pulls in the fixture.
    if request.node.get_closest_marker("tracesock") is not None:
        request.getfixturevalue("tracesock")
