"""Launch a whole deployment from one YAML: `python scripts/launch.py --config configs/demo.yaml`.

Starts the coordinator and every worker, prints a line containing `ready` once every handshake is
done, then supervises: a process that exits is restarted with backoff (YAML `supervision:`), so the
deployment never goes down because one process died. Ctrl-C / SIGTERM stop them all.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from protocol.errors import TandemError
from runtime.launch import Deployment
from runtime.logs import setup_logging
from runtime.supervisor import Supervisor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="deployment YAML")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="start-up time limit")
    args = parser.parse_args()
    setup_logging("launch")
    deployment = Deployment(args.config)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        deployment.start(args.timeout_s)
        config = deployment.config
        print(f"ready: clients connect to {config.coordinator.client_address} "
              f"(mode {config.speculation.mode})", flush=True)
        supervisor = Supervisor(deployment, config.supervision)
        while True:
            time.sleep(0.2)
            supervisor.check()
    except TandemError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        deployment.stop()


if __name__ == "__main__":
    sys.exit(main())
