"""Peak resident memory and CPU time of a set of processes, sampled by a thread while a method runs."""

from __future__ import annotations

import threading
import time

import psutil

from runtime.bench.metrics import cpu_utilisation


class ProcessSampler:
    """`with ProcessSampler({"verifier": pid, ...}) as s: ...` then `s.peak_rss_mb`, `s.cpu_util`."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.05) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval_s = interval_s
        self.peak_rss: dict[str, int] = dict.fromkeys(pids, 0)
        self._cpu_start: dict[str, float] = {}
        self.cpu_util: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = 0.0

    def __enter__(self) -> ProcessSampler:
        self.start_cpu_window()
        self._sample()
        self._thread.start()
        return self

    def start_cpu_window(self) -> None:
        """CPU use is measured from here (after a warm-up) to the end; peak RSS over the whole block."""
        self._cpu_start = {name: self._cpu_s(p) for name, p in self.processes.items()}
        self._started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.monotonic() - self._started
        self.cpu_util = {name: cpu_utilisation(self._cpu_s(p) - self._cpu_start[name], wall)
                         for name, p in self.processes.items()}

    @property
    def peak_rss_mb(self) -> dict[str, float]:
        return {name: rss / 2**20 for name, rss in self.peak_rss.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        for name, process in self.processes.items():
            try:
                self.peak_rss[name] = max(self.peak_rss[name], process.memory_info().rss)
            except psutil.Error:  # the process ended; its peak so far stands
                continue

    @staticmethod
    def _cpu_s(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)
