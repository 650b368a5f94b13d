"""Start the coordinator of a deployment: `python scripts/coordinator.py --config configs/demo.yaml`."""

from __future__ import annotations

import argparse
import logging
import sys

from protocol.errors import ConfigError
from protocol.trace import configure_from_env
from runtime import builders
from runtime.config import TandemConfig
from runtime.coordinator import Coordinator
from runtime.logs import setup_logging
from runtime.security import server_keys
from runtime.server import CoordinatorServer, install_signal_handlers

log = logging.getLogger("coordinator")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="deployment YAML")
    args = parser.parse_args()
    config = TandemConfig.load(args.config)
    setup_logging("coordinator", config.coordinator.log_level)
    configure_from_env("coordinator")
    model = config.verifier.model
    coordinator = Coordinator(config, builders.load_tokenizer(model), builders.read_reference(model),
                              builders.read_eos_ids(model))
    try:
        curve = server_keys(config.security)
        server = CoordinatorServer(coordinator, config.coordinator.client_address, config.coordinator.worker_address,
                                   max_message_bytes=config.limits.max_message_bytes,
                                   curve=curve[0] if curve else None, client_keys_dir=curve[1] if curve else None)
    except (OSError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    install_signal_handlers(server)
    log.info("listening: clients on %s, workers on %s (mode %s)", config.coordinator.client_address,
             config.coordinator.worker_address, config.speculation.mode)
    try:
        server.serve()
    finally:
        server.shutdown_workers()
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
