"""Capture: the TCP segments on the wire, and the calls they belong to.

Theory of operation. While a trace runs, a sniffer on the loopback interface keeps the
frames of the traced connections; when the trace is closed it writes them as pcapng
with each segment's calls as packet comments. Reading goes the other way: frames ->
segments -> joined with the trace's calls. tshark is the independent reader.

- ``sniffer.py``: CaptureSession: an AF_PACKET socket with a kernel BPF filter (scapy,
  imported lazily, compiles it), drops reported, never hidden.
- ``segments.py``: frames parsed into TCP segments, relative sequence numbers.
- ``pcapng.py``: reading and writing pcapng (and reading pcap), packet comments.
- ``join.py``: segments matched to the calls behind them (I/O-free but for reading).
- ``setups.py``: what the join needs of each socket, from a loaded trace or one streaming
  pass over a file (traces of any size).
- ``analysis.py``: per-stream handshake, data and teardown from tshark's rows (I/O-free).
- ``tshark.py``: ``tracesock analyze``: running tshark and printing its analysis.

``import tracesock`` never imports scapy or pyshark.
"""
