"""``tracesock report``: one self-contained HTML page, checked as text and in headless chromium."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from tracesock.cli import main
from tracesock.lecture.report import report_document
from tracesock.trace.reader import load

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
ECHO, ECHO_CAP = str(CAPTURES / "echo.jsonl"), str(CAPTURES / "echo.pcapng")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing and CI is set (make test installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _png_colors(path: Path) -> int:
    """Distinct RGB colours of an 8-bit RGB/RGBA PNG (what chromium writes), decoded here."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6), (depth, ctype)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if ctype == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    prev, colors = bytearray(stride), set()
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 4 == 0:
            colors.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 2))
        prev = line
    return len(colors)


def test_report_is_self_contained() -> None:
    html = report_document(load(ECHO), ECHO_CAP)
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<link" not in html and "@import" not in html
    assert html.count("<svg") == 3  # the ladder and two charts
    assert "TIME_WAIT" in html and "SYN,ACK" in html
    assert 'data-sock="2"' in html and 'data-op="recv"' in html
    assert 'class="f-sock"' in html and 'class="f-op"' in html


def test_cli_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["report", ECHO, "--capture", ECHO_CAP, "-o", str(out)]) == 0
    assert "<svg" in out.read_text(encoding="utf-8")
    assert main(["report", str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    assert main(["report", ECHO, "--capture", ECHO_CAP, "-o", str(page)]) == 0
    url = page.as_uri()
    dom = _browser(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for line in dom.stderr.splitlines():
        assert "Uncaught" not in line and ":CONSOLE" not in line, line
    # the script ran: it marked the report ready and counted the rows it shows
    assert re.search(r'class="tracesock"[^>]*data-ready="1"', dom.stdout), dom.stdout[:500]
    assert 'data-shown="15"' in dom.stdout and "15 of 15 calls" in dom.stdout
    assert dom.stdout.count("<svg") == 3 and '<table class="timeline">' in dom.stdout
    # the filters, preset from the URL's fragment: sock 2 called recv once
    filtered = _browser(tmp_path, "--dump-dom", url + "#sock=2&op=recv")
    assert 'data-shown="1"' in filtered.stdout and "1 of 15 calls" in filtered.stdout
    assert filtered.stdout.count('style="display: none;"') == 14
    shot = tmp_path / "report.png"
    run = _browser(tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", url)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert _png_colors(shot) >= 8  # text, lifelines, coloured arrows, state boxes, bars
