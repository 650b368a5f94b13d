"""Timeline spans for every process, on one clock, in Chrome-trace form (opens in Perfetto).

Off unless the environment names a folder (`TANDEM_TRACE_DIR`, inherited by the processes a
launcher starts) or `configure()` is called. When off, `span()` hands back one shared no-op context:
the cost is a function call. When on, each process appends complete events ("ph": "X") as JSON
lines to `<dir>/<process>-<pid>.jsonl`; `ts`/`dur` are microseconds of `time.monotonic_ns()`, a
clock every process on one host shares. `runtime/bench/trace.py` merges the files into one trace.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

ENV_VAR = "TANDEM_TRACE_DIR"
_FLUSH_EVERY = 256


def now_us() -> float:
    """The trace clock: microseconds of CLOCK_MONOTONIC (shared by all processes on a host)."""
    return time.monotonic_ns() / 1000.0


class Tracer:
    def __init__(self) -> None:
        self.enabled = False
        self.process = "process"
        self._events: list[dict[str, Any]] = []
        self._file: TextIO | None = None
        self._lock = threading.Lock()

    def configure(self, folder: str | os.PathLike[str] | None, process: str) -> None:
        """Start recording into `folder` (None: stay off) under the name `process`."""
        self.process = process
        if folder is None or self.enabled:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        self._file = open(Path(folder) / f"{process}-{os.getpid()}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.enabled = True
        self._record({"name": "process_name", "ph": "M", "args": {"name": process}})
        atexit.register(self.flush)

    @contextlib.contextmanager
    def _span(self, name: str, args: dict[str, Any]) -> Iterator[None]:
        start = now_us()
        try:
            yield
        finally:
            self.complete(name, start, now_us() - start, **args)

    def span(self, name: str, **args: Any) -> contextlib.AbstractContextManager[None]:
        """`with tracer.span("verify", nodes=8): ...` records one complete event."""
        if not self.enabled:
            return _NULL
        return self._span(name, args)

    def complete(self, name: str, start_us: float, duration_us: float, **args: Any) -> None:
        """Record a span measured elsewhere (e.g. a wait that began before this call)."""
        if self.enabled:
            self._record({"name": name, "ph": "X", "ts": start_us, "dur": duration_us, "args": args})

    def _record(self, event: dict[str, Any]) -> None:
        event.update(pid=os.getpid(), tid=threading.get_native_id())
        with self._lock:
            self._events.append(event)
            full = len(self._events) >= _FLUSH_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            events, self._events = self._events, []
            if self._file is not None and events:
                self._file.write("".join(json.dumps(e) + "\n" for e in events))
                self._file.flush()


_NULL = contextlib.nullcontext()
tracer = Tracer()


def configure_from_env(process: str) -> None:
    """Turn tracing on when `TANDEM_TRACE_DIR` is set (each process calls this once at start)."""
    tracer.configure(os.environ.get(ENV_VAR) or None, process)
