"""Start one worker: `python scripts/worker.py --config configs/demo.yaml --role verifier|drafter`.

The worker loads its model, pins itself to the YAML's device / cores / threads, connects to the
coordinator's worker address and serves until told to shut down (or SIGINT / SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from protocol.trace import configure_from_env
from runtime import builders
from runtime.config import TandemConfig
from runtime.logs import setup_logging
from runtime.security import client_keys
from workers.process import WorkerProcess

log = logging.getLogger("worker")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="deployment YAML")
    parser.add_argument("--role", required=True, choices=["verifier", "drafter"])
    parser.add_argument("--id", default=None, help="worker id (default: role-pid)")
    args = parser.parse_args()
    config = TandemConfig.load(args.config)
    worker_id = args.id or f"{args.role}-{os.getpid()}"
    setup_logging(worker_id, config.coordinator.log_level)
    configure_from_env(worker_id)
    build = builders.build_verifier_worker if args.role == "verifier" else builders.build_drafter_worker
    handler = build(config, worker_id)
    process = WorkerProcess(handler, config.coordinator.worker_address, config.coordinator.heartbeat_interval_s,
                            config.limits.max_message_bytes, client_keys(config.security))

    def stop(signum: int, frame: Any) -> None:
        process.stopping.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("%s ready, connecting to %s", worker_id, config.coordinator.worker_address)
    return process.run()


if __name__ == "__main__":
    sys.exit(main())
