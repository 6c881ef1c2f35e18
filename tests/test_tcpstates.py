"""tracesock.lecture.tcpstates: the state machine on hand-built segments, then against the
kernel's own states (/proc/net/tcp) for a real loopback exchange, hand-derived and captured."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tracesock.lecture.tcpstates import (
    PROC_STATES,
    Call,
    Inferred,
    Seg,
    State,
    flag_letters,
    infer_from_calls,
    track,
)

CLOSED, LISTEN, SYN_SENT, SYN_RCVD = State.CLOSED, State.LISTEN, State.SYN_SENT, State.SYN_RCVD
EST, FW1, FW2, TW = State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.TIME_WAIT
CW, CLOSING, LA = State.CLOSE_WAIT, State.CLOSING, State.LAST_ACK

C, S = 1000, 5000  # initial sequence numbers of the client (A, 0) and the server (B, 1)
HANDSHAKE = [Seg(0, "S", C), Seg(1, "SA", S, C + 1), Seg(0, "A", C + 1, S + 1)]


def _lifecycle(c: int = C, s: int = S) -> list[Seg]:
    """Handshake, 5 bytes client -> server, client closes first, each FIN acked alone."""
    return [Seg(0, "S", c), Seg(1, "SA", s, c + 1), Seg(0, "A", c + 1, s + 1),
            Seg(0, "PA", c + 1, s + 1, 5), Seg(1, "A", s + 1, c + 6),
            Seg(0, "FA", c + 6, s + 1), Seg(1, "A", s + 1, c + 7),
            Seg(1, "FA", s + 1, c + 7), Seg(0, "A", c + 7, s + 2)]


LIFECYCLE_STATES = [(SYN_SENT, SYN_RCVD), (EST, SYN_RCVD), (EST, EST), (EST, EST), (EST, EST),
                    (FW1, CW), (FW2, CW), (TW, LA), (TW, CLOSED)]


# -- the state machine on hand-built segments -------------------------------------------

def test_active_and_passive_close() -> None:
    assert track(_lifecycle()) == LIFECYCLE_STATES


def test_sequence_numbers_wrap_around() -> None:
    assert track(_lifecycle(c=2**32 - 3, s=2**32 - 1)) == LIFECYCLE_STATES
    wrapped = [Seg(x.sender, x.flags, x.seq % 2**32, x.ack % 2**32, x.length)
               for x in _lifecycle(c=2**32 - 3, s=2**32 - 1)]
    assert track(wrapped) == LIFECYCLE_STATES


def test_server_closes_first() -> None:
    segs = [*HANDSHAKE, Seg(1, "FA", S + 1, C + 1), Seg(0, "A", C + 1, S + 2),
            Seg(0, "FA", C + 1, S + 2), Seg(1, "A", S + 2, C + 2)]
    assert track(segs)[3:] == [(CW, FW1), (CW, FW2), (LA, TW), (CLOSED, TW)]


def test_fin_piggybacked_on_data_is_acked_only_past_the_data() -> None:
    segs = [*HANDSHAKE, Seg(0, "FPA", C + 1, S + 1, 5),
            Seg(1, "A", S + 1, C + 6),   # acks the 5 bytes, not the FIN (at C + 6)
            Seg(1, "A", S + 1, C + 7)]   # acks the FIN
    assert track(segs)[3:] == [(FW1, CW), (FW1, CW), (FW2, CW)]


def test_fin_ack_that_also_acks_the_peer_fin() -> None:
    # What loopback usually shows: the server's FIN carries the ACK of the client's FIN.
    segs = [*HANDSHAKE, Seg(0, "FA", C + 1, S + 1), Seg(1, "FA", S + 1, C + 2),
            Seg(0, "A", C + 2, S + 2)]
    assert track(segs)[3:] == [(FW1, CW), (TW, LA), (TW, CLOSED)]


def test_simultaneous_close_goes_through_closing() -> None:
    # Each FIN acks only the peer's SYN, not its FIN: they crossed in flight.
    segs = [*HANDSHAKE, Seg(0, "FA", C + 1, S + 1), Seg(1, "FA", S + 1, C + 1),
            Seg(0, "A", C + 2, S + 2), Seg(1, "A", S + 2, C + 2)]
    assert track(segs)[3:] == [(FW1, CW), (CLOSING, CLOSING), (CLOSING, TW), (TW, TW)]


def test_simultaneous_open() -> None:
    segs = [Seg(0, "S", C), Seg(1, "S", S), Seg(0, "SA", C, S + 1), Seg(1, "SA", S, C + 1)]
    assert track(segs, listening=False) == [
        (SYN_SENT, CLOSED), (SYN_RCVD, SYN_RCVD), (SYN_RCVD, EST), (EST, EST)]


def test_rst_closes_both_ends() -> None:
    assert track([*HANDSHAKE, Seg(1, "R", S + 1)])[-1] == (CLOSED, CLOSED)
    assert track([*HANDSHAKE, Seg(0, "RA", C + 1, S + 1)])[-1] == (CLOSED, CLOSED)
    # Linux lets a RST end TIME_WAIT (net.ipv4.tcp_rfc1337 = 0).
    assert track([*_lifecycle(), Seg(1, "R", S + 2)])[-1] == (CLOSED, CLOSED)


def test_refused_connect() -> None:
    segs = [Seg(0, "S", C), Seg(1, "RA", 0, C + 1)]
    assert track(segs, listening=False) == [(SYN_SENT, CLOSED), (CLOSED, CLOSED)]


def test_rst_without_ack_does_not_reset_syn_sent() -> None:
    segs = [Seg(0, "S", C), Seg(1, "R", 0)]
    assert track(segs, listening=False) == [(SYN_SENT, CLOSED), (SYN_SENT, CLOSED)]


def test_rst_in_passive_syn_rcvd_returns_to_listen() -> None:
    segs = [Seg(0, "S", C), Seg(1, "SA", S, C + 1), Seg(0, "R", C + 1)]
    assert track(segs) == [(SYN_SENT, SYN_RCVD), (EST, SYN_RCVD), (CLOSED, LISTEN)]


def test_syn_to_a_full_backlog_is_ignored_then_retransmitted() -> None:
    segs = [Seg(0, "S", C), Seg(0, "S", C), Seg(0, "S", C), *HANDSHAKE[1:]]
    assert track(segs) == [(SYN_SENT, LISTEN), (SYN_SENT, LISTEN), (SYN_SENT, SYN_RCVD),
                           (EST, SYN_RCVD), (EST, EST)]
    assert track(segs[:2]) == [(SYN_SENT, LISTEN)] * 2  # never answered: stays LISTEN


def test_duplicate_segments_change_nothing() -> None:
    segs = _lifecycle()
    doubled = [segs[0]] + [x for seg in segs[1:] for x in (seg, seg)]
    expected = [LIFECYCLE_STATES[0]] + [x for st in LIFECYCLE_STATES[1:] for x in (st, st)]
    assert track(doubled) == expected


def test_segments_after_both_are_closed() -> None:
    segs = [*HANDSHAKE, Seg(0, "R", C + 1), Seg(0, "PA", C + 1, S + 1, 10), Seg(1, "R", S + 1),
            Seg(1, "FA", S + 1, C + 1)]
    assert track(segs)[3:] == [(CLOSED, CLOSED)] * 4


def test_initiator_is_the_first_syn_sender() -> None:
    segs = [Seg(1, "S", S), Seg(0, "SA", C, S + 1), Seg(1, "A", S + 1, C + 1)]
    assert track(segs) == [(SYN_RCVD, SYN_SENT), (SYN_RCVD, EST), (EST, EST)]
    assert track(segs, initiator=1) == track(segs)
    assert track([]) == []
    with pytest.raises(ValueError):
        track(segs, initiator=2)


def test_seg_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="flag"):
        Seg(0, "SYN")
    with pytest.raises(ValueError, match="sender"):
        Seg(2, "A")
    assert Seg(0, "FPA", 10, 0, 5).fin_seq == 15
    assert Seg(0, "F", 2**32 - 1).fin_seq == 2**32 - 1


def test_flag_letters() -> None:
    assert flag_letters(0x02) == "S"
    assert flag_letters(0x12) == "SA"
    assert flag_letters(0x19) == "FPA"
    assert flag_letters(0) == ""


def test_state_names_and_proc_codes() -> None:
    assert State.from_proc("0A") is LISTEN
    assert State.from_proc("06") is TW
    assert State.from_proc("0C") is SYN_RCVD  # NEW_SYN_RECV: a request socket
    assert PROC_STATES["01"] is EST and PROC_STATES["0B"] is CLOSING
    assert len(set(PROC_STATES.values())) == len(State)
    assert [s.ss for s in (EST, SYN_RCVD, FW1, CW, CLOSED)] == [
        "ESTAB", "SYN-RECV", "FIN-WAIT-1", "CLOSE-WAIT", "UNCONN"]
    assert [s.rfc for s in (SYN_RCVD, FW2, TW)] == ["SYN-RECEIVED", "FIN-WAIT-2", "TIME-WAIT"]


# -- inferring from calls ----------------------------------------------------------------

SCRIPT: list[tuple[int, str] | tuple[int, str, int]] = [
    (1, "listen"), (0, "connect"), (1, "accept"), (0, "send"), (1, "recv"),
    (0, "shutdown", socket.SHUT_WR), (1, "eof"), (1, "close"), (0, "close")]
SCRIPT_STATES = [(CLOSED, LISTEN), (EST, EST), (EST, EST), (EST, EST), (EST, EST), (FW2, CW),
                 (FW2, CW), (TW, CLOSED), (TW, CLOSED)]


def test_infer_the_kernel_script() -> None:
    got = infer_from_calls(SCRIPT)
    assert got == SCRIPT_STATES
    assert all(isinstance(x, Inferred) and x.inferred for x in got)
    assert got[5].a is FW2 and got[5].b is CW


def test_infer_close_before_peer() -> None:
    got = infer_from_calls([(0, "connect"), (0, "close"), (1, "close")])
    assert got == [(EST, EST), (FW2, CW), (TW, CLOSED)]


def test_infer_shared_close_and_shut_rd_send_no_fin() -> None:
    calls = [Call(0, "connect"), Call(0, "close", shared=True), Call(0, "shutdown", socket.SHUT_RD)]
    assert infer_from_calls(calls) == [(EST, EST)] * 3


def test_infer_resets() -> None:
    assert infer_from_calls([(0, "connect"), (1, "abort")])[-1] == (CLOSED, CLOSED)
    # Data sent to a peer that closed (not merely shut down) draws a RST.
    closed = infer_from_calls([(0, "connect"), (0, "close"), (1, "send")])
    assert closed == [(EST, EST), (FW2, CW), (CLOSED, CLOSED)]
    half = infer_from_calls([(0, "connect"), (0, "shutdown", socket.SHUT_WR), (1, "send")])
    assert half[-1] == (FW2, CW)


def test_infer_refused_and_closed_listener() -> None:
    assert infer_from_calls([(0, "connect")], listening=False) == [(CLOSED, CLOSED)]
    assert infer_from_calls([(1, "close"), (0, "connect")]) == [(CLOSED, CLOSED)] * 2
    assert infer_from_calls([(0, "listen"), (1, "connect")], initiator=1, listening=False) == [
        (LISTEN, CLOSED), (EST, EST)]
    with pytest.raises(ValueError, match="unknown call"):
        infer_from_calls([(0, "bind")])


# -- against the kernel: /proc/net/tcp during a real loopback exchange -------------------

def _proc_tcp() -> dict[tuple[int, int], State]:
    """(local port, remote port) -> state of the 127.0.0.1 sockets in /proc/net/tcp."""
    out: dict[tuple[int, int], State] = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, remote, st = line.split()[1:4]
            ip, port = local.split(":")
            addr = socket.inet_ntoa(int(ip, 16).to_bytes(4, sys.byteorder))
            if addr == "127.0.0.1":
                out[int(port, 16), int(remote.split(":")[1], 16)] = State.from_proc(st)
    return out


def _wait_states(client: int, server: int, want: tuple[State, State]) -> None:
    """Wait (bounded) until the client's and the server's socket are in ``want``."""
    deadline = time.monotonic() + 3
    while True:
        table = _proc_tcp()
        got = (table.get((client, server), CLOSED), table.get((server, client), CLOSED))
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    assert got == want


# What the scripted exchange shows in /proc/net/tcp at each checkpoint.
AFTER_CONNECT, AFTER_FIN_ACKED, AFTER_SERVER_CLOSE = (EST, EST), (FW2, CW), (TW, CLOSED)


def _exchange(on_port: Callable[[int], None] = lambda port: None) -> tuple[int, int]:
    """The scripted exchange, checked against /proc at each step; (client, server) port."""
    lst = socket.socket()
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        sport = lst.getsockname()[1]
        assert _proc_tcp()[sport, 0] is LISTEN
        on_port(sport)
        with socket.create_connection(("127.0.0.1", sport), timeout=5) as cli:
            cport = cli.getsockname()[1]
            assert _proc_tcp()[cport, sport] is EST  # at once: connect() has returned
            _wait_states(cport, sport, AFTER_CONNECT)
            srv, _ = lst.accept()
            with srv:
                srv.settimeout(5)
                cli.sendall(b"hello")
                assert srv.recv(5) == b"hello"
                cli.shutdown(socket.SHUT_WR)
                assert srv.recv(5) == b""
                _wait_states(cport, sport, AFTER_FIN_ACKED)
            _wait_states(cport, sport, AFTER_SERVER_CLOSE)
        _wait_states(cport, sport, AFTER_SERVER_CLOSE)  # closing a TIME_WAIT socket: no change
        assert _proc_tcp()[sport, 0] is LISTEN
        return cport, sport
    finally:
        lst.close()


def test_kernel_agrees_with_hand_derived_segments() -> None:
    _exchange()
    states = track(_lifecycle())  # the segments this exchange implies
    assert states == LIFECYCLE_STATES
    assert (states[2], states[6], states[8]) == (AFTER_CONNECT, AFTER_FIN_ACKED,
                                                 AFTER_SERVER_CLOSE)
    assert infer_from_calls(SCRIPT)[2::3] == [AFTER_CONNECT, AFTER_FIN_ACKED, AFTER_SERVER_CLOSE]


def _can_capture() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _can_capture(), reason="capturing needs CAP_NET_RAW (root)")
def test_kernel_agrees_with_captured_segments() -> None:
    sendrecv = pytest.importorskip("scapy.sendrecv")
    inet = pytest.importorskip("scapy.layers.inet")
    packets: list[Any] = []
    sniffers: list[Any] = []

    def start(port: int) -> None:
        # "inbound": loopback hands a packet socket each packet twice (out, then in).
        ready = threading.Event()
        sniffer = sendrecv.AsyncSniffer(iface="lo", filter=f"inbound and tcp port {port}",
                                        store=False, prn=packets.append,
                                        started_callback=ready.set)
        sniffer.start()  # returns before the socket is read
        sniffers.append(sniffer)
        assert ready.wait(5), f"sniffer did not start: {sniffer.exception}"

    try:
        cport, sport = _exchange(start)
        deadline = time.monotonic() + 3  # the last ACK may still be on its way to the sniffer
        while sum("F" in str(p[inet.TCP].flags) for p in packets) < 2 or \
                str(packets[-1][inet.TCP].flags) != "A":
            assert time.monotonic() < deadline, [p.summary() for p in packets]
            time.sleep(0.01)
    finally:
        for sniffer in sniffers:
            sniffer.stop()
    segs: list[Seg] = []
    for p in packets:
        ip, tcp = p[inet.IP], p[inet.TCP]
        assert {tcp.sport, tcp.dport} == {cport, sport}
        segs.append(Seg(0 if tcp.sport == cport else 1, str(tcp.flags), tcp.seq, tcp.ack,
                        ip.len - 4 * ip.ihl - 4 * tcp.dataofs))
    states = track(segs)
    # The ladder, each state pair once (how the kernel groups ACKs may vary).
    ladder = [st for i, st in enumerate(states) if i == 0 or st != states[i - 1]]
    assert ladder == [(SYN_SENT, SYN_RCVD), (EST, SYN_RCVD), (EST, EST), (FW1, CW), (FW2, CW),
                      (TW, LA), (TW, CLOSED)]
    # The checkpoints: after the handshake ACK, after the ACK of the client's FIN, at the end.
    handshake = next(i for i, x in enumerate(segs) if x.sender == 0 and x.flags == "A")
    client_fin = next(x for x in segs if x.sender == 0 and "F" in x.flags).fin_seq
    fin_acked = next(i for i, x in enumerate(segs) if x.sender == 1 and x.ack == client_fin + 1)
    assert states[handshake] == AFTER_CONNECT
    assert states[fin_acked] == AFTER_FIN_ACKED
    assert states[-1] == AFTER_SERVER_CLOSE
