"""The %%tracesock cell magic and trace_html, through IPython's own shell."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracesock.lecture.notebook import NAMESPACE_NAME, load_ipython_extension, trace_html
from tracesock.trace.reader import Trace, load

CAPTURES = Path(__file__).resolve().parent.parent / "captures"

CELL = """
import socket
from tracesock.lecture.programs import Server, echo_client, echo_handler, listen_on_loopback
srv = Server(listen_on_loopback(socket.socket), echo_handler, traced=True)
reply = echo_client("127.0.0.1", srv.port)
srv.join()
reply
"""


class _Published:
    """Stands in for the shell's display publisher: keeps what display() sends."""

    is_publishing = False

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []

    def publish(self, data: dict[str, Any], metadata: Any = None, **kwargs: Any) -> None:
        self.outputs.append(data)

    def clear_output(self, wait: bool = False) -> None:
        pass


@pytest.fixture
def shell() -> Iterator[Any]:
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    saved_pub, saved_types = ip.display_pub, list(ip.display_formatter.active_types)
    ip.display_pub = _Published()
    ip.display_formatter.active_types = ["text/plain", "text/html"]
    load_ipython_extension(ip)
    try:
        yield ip
    finally:
        ip.display_pub = saved_pub
        ip.display_formatter.active_types = saved_types
        ip.user_ns.pop(NAMESPACE_NAME, None)


def _html(ip: Any) -> str:
    htmls = [o["text/html"] for o in ip.display_pub.outputs if "text/html" in o]
    assert htmls, ip.display_pub.outputs
    return str(htmls[-1])


def test_magic_traces_the_cell_and_shows_timeline_and_diagram(shell: Any,
                                                               tmp_path: Path) -> None:
    result = shell.run_cell_magic("tracesock", f"--out {tmp_path}", CELL)
    assert result is None
    assert shell.user_ns["reply"] == "Hello, 대한민국!"
    tr = shell.user_ns[NAMESPACE_NAME]
    assert isinstance(tr, Trace) and tr.complete
    roles = sorted(c.role for c in tr.connections.values())
    assert roles == ["client", "listener", "server"]
    assert [p.suffix for p in tmp_path.iterdir()] == [".jsonl"]
    html = _html(shell)
    assert "<svg" in html and "timeline" in html and "accept()" in html
    assert "connect" in html and "<table" in html


def test_magic_through_run_cell_shows_the_cells_own_output(shell: Any) -> None:
    outcome = shell.run_cell("%%tracesock\n" + CELL)
    assert outcome.success and outcome.result is None
    plain = [o["text/plain"] for o in shell.display_pub.outputs]
    assert any("Hello" in p for p in plain)  # the cell's last expression
    assert "<svg" in _html(shell)


def test_errors_in_the_cell_still_leave_the_trace(shell: Any) -> None:
    shell.run_cell_magic("tracesock", "--quiet", "import socket\n"
                         "s = socket.socket()\ns.close()\nraise ValueError('boom')\n")
    tr = shell.user_ns[NAMESPACE_NAME]
    assert [e.op for e in tr.events] == ["socket", "close"]
    assert shell.display_pub.outputs == [] or all(
        "text/html" not in o for o in shell.display_pub.outputs)


def test_bad_options_are_reported_not_raised(shell: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    shell.run_cell_magic("tracesock", "--nope", "x = 1\n")
    assert "unknown option" in capsys.readouterr().out
    assert "x" not in shell.user_ns or shell.user_ns.get("x") != 1


def test_capture_option(shell: Any, tmp_path: Path) -> None:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()
    except PermissionError as exc:
        if os.environ.get("TRACESOCK_REQUIRE_CAPTURE") == "1":
            pytest.fail(f"TRACESOCK_REQUIRE_CAPTURE=1 but capture is impossible: {exc}")
        pytest.skip(f"no CAP_NET_RAW ({exc})")
    shell.run_cell_magic("tracesock", f"--capture --out {tmp_path}", CELL)
    assert len(list(tmp_path.glob("*.pcapng"))) == 1
    html = _html(shell)
    assert "SYN,ACK" in html and "accept() returns sock 3" in html


def test_trace_html_escapes_and_works_as_repr() -> None:
    tr = load(str(CAPTURES / "http-close.jsonl"))
    html = trace_html(tr)
    assert html.startswith('<div class="tracesock"') and html.rstrip().endswith("</div>")
    assert "<svg" in html and ("&quot;" in html or "&#x27;" in html)
    assert "GET /test/index.html" in html
    with_capture = trace_html(load(str(CAPTURES / "echo.jsonl")),
                              str(CAPTURES / "echo.pcapng"))
    assert "SYN,ACK" in with_capture


def test_load_ext_tracesock_and_trace_repr_html() -> None:
    """``%load_ext tracesock`` (the package itself) and a Trace shown as HTML."""
    from IPython.core.interactiveshell import InteractiveShell

    import tracesock

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "tracesock")
    assert "tracesock" in shell.magics_manager.magics["cell"]
    golden = Path(__file__).resolve().parent.parent / "captures" / "echo.jsonl"
    html = tracesock.load(str(golden))._repr_html_()
    assert "<table" in html and "<svg" in html
