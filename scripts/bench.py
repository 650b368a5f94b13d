"""One benchmark of Tandem against the peers a user would pick instead (logic: runtime/bench/).

    python scripts/bench.py --help
"""

from __future__ import annotations

from runtime.bench.cli import main

if __name__ == "__main__":
    main()
