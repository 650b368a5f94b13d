"""Start the OpenAI-compatible HTTP server of a running deployment.

    python scripts/serve.py --config configs/demo.yaml [--set server.port=8001]

Listens on the YAML's `server.host:server.port` (default 127.0.0.1:8000) and talks to the
coordinator at `coordinator.client_address`. `scripts/launch.py` starts it too when the YAML has a
`server:` section.
"""

from __future__ import annotations

import sys

from runtime.http.serve import main

if __name__ == "__main__":
    sys.exit(main())
