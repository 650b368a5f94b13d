"""One logging setup per process, with the process name in every line."""

from __future__ import annotations

import logging


def setup_logging(process_name: str, level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), force=True,
                        format=f"%(asctime)s {process_name} %(levelname)s %(name)s: %(message)s")
