"""Running the HTTP server process: `python scripts/serve.py --config configs/demo.yaml` (or `tandem serve`).

It connects to the coordinator named in the YAML and listens on `server.host:server.port`
(defaults 127.0.0.1:8000 when the YAML has no `server:` section).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from protocol.errors import ConfigError, TandemError
from runtime.builders import load_tokenizer
from runtime.client import AsyncClient
from runtime.config import TandemConfig
from runtime.config_overrides import add_config_arguments
from runtime.config_schema import ServerConfig
from runtime.logs import setup_logging
from runtime.security import client_keys

log = logging.getLogger(__name__)
CLIENT_MARGIN_S = 30.0  # the client waits this much longer than the coordinator's own request timeout


def serve(config: TandemConfig) -> None:
    import uvicorn  # lazy: only this process needs the web stack

    from runtime.http.app import build_app
    from runtime.http.service import TandemService

    server = config.server or ServerConfig()
    client = AsyncClient(config.coordinator.client_address, config.limits.request_timeout_s + CLIENT_MARGIN_S,
                         curve=client_keys(config.security))
    app = build_app(TandemService(config, client, load_tokenizer(config.verifier.model)))
    log.info("OpenAI-compatible server on http://%s:%d/v1 for the coordinator at %s", server.host, server.port,
             config.coordinator.client_address)
    uvicorn.run(app, host=server.host, port=server.port, log_level=config.coordinator.log_level.lower(),
                timeout_graceful_shutdown=5)


def wait_healthy(base_url: str, timeout_s: float, check_alive: Callable[[], None]) -> None:
    """Poll `GET /health` until it answers 200; `check_alive` raises when the server process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive()
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while no verifier has joined
        time.sleep(0.2)
    raise TandemError(f"the HTTP server at {base_url} was not healthy within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = TandemConfig.load(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    setup_logging("http-server", config.coordinator.log_level)
    serve(config)
    return 0
