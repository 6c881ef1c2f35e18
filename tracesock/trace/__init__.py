"""The trace format: what a traced program did, as plain data and as a file.

Theory of operation. A trace is JSONL: a header line, one line per socket call and an
end line (docs/trace-format.md; ``schema.json`` is its JSON Schema). This package is the
bottom stage: it imports nothing of tracesock but ``errors``, and every other stage
reads or writes traces through it.

- ``events.py``: the records as frozen dataclasses, the format's version and field
  names, address and payload encodings, a call's label as the program wrote it.
- ``reader.py``: ``load()``, ``Trace``, ``Connection`` and ``TraceReader``: strict on
  malformed input (errors naming file and line), forgiving of a writer that died.
- ``batches.py``: the same reader a batch of lines at a time, for replay's speed.
- ``progress.py``: the progress bar a long read draws on a terminal (stats, analyze).
- ``merge.py``: the per-process files of a trace that followed children, merged into
  one trace (by the last process out, or by the next reader).
"""
