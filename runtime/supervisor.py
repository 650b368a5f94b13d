"""Keeps a deployment up: a process that exits is started again, with exponential backoff and a budget.

Used by scripts/launch.py after start-up. Exit code 2 means "refused for good" (a model mismatch,
a port taken, a bad flag): restarting cannot help, so that process is given up on at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.config_schema import SupervisionConfig
from runtime.launch import Deployment

log = logging.getLogger(__name__)
EXIT_REFUSED = 2


def restart_delay(config: SupervisionConfig, recent_restarts: int) -> float | None:
    """Seconds to wait before the next restart, or None when the budget of the window is spent."""
    if not config.restart or recent_restarts >= config.max_restarts:
        return None
    return float(min(config.max_backoff_s, config.initial_backoff_s * 2**recent_restarts))


@dataclass
class _Record:
    restarts: list[float] = field(default_factory=list)  # when each restart was decided
    due_at: float | None = None  # a restart is scheduled
    given_up: bool = False


class Supervisor:
    def __init__(self, deployment: Deployment, config: SupervisionConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deployment, self.config, self.clock = deployment, config, clock
        self.records: dict[str, _Record] = {}
        self.num_restarts = 0

    def check(self) -> None:
        """One pass: notice processes that exited, schedule their restarts, start the ones due."""
        now = self.clock()
        for name, process in list(self.deployment.processes.items()):
            record = self.records.setdefault(name, _Record())
            if record.given_up or record.due_at is not None or process.poll() is None:
                continue
            self._on_exit(name, process.returncode, record, now)
        for name, record in self.records.items():
            if record.due_at is not None and now >= record.due_at:
                record.due_at = None
                self.deployment.restart(name)
                self.num_restarts += 1
                log.warning("%s restarted (pid %d)", name, self.deployment.processes[name].pid)

    def _on_exit(self, name: str, code: int, record: _Record, now: float) -> None:
        record.restarts = [t for t in record.restarts if now - t < self.config.restart_window_s]
        delay = None if code == EXIT_REFUSED else restart_delay(self.config, len(record.restarts))
        if delay is None:
            record.given_up = True
            why = "it was refused (exit code 2)" if code == EXIT_REFUSED else \
                f"restart budget spent ({self.config.max_restarts} in {self.config.restart_window_s:.0f} s)"
            log.error("%s exited with code %d: not restarting, %s", name, code, why)
            return
        record.restarts.append(now)
        record.due_at = now + delay
        log.warning("%s exited with code %d: restarting in %.1f s (restart %d of %d in %.0f s)", name, code, delay,
                    len(record.restarts), self.config.max_restarts, self.config.restart_window_s)
