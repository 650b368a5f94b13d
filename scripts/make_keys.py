"""Make CURVE key pairs for a deployment: `python scripts/make_keys.py --dir keys --clients client verifier drafter`.

Writes, with `zmq.auth.create_certificates`:
  DIR/server.key, DIR/server.key_secret            the coordinator's pair (keep .key_secret on its host)
  DIR/clients/NAME.key                             each client's / worker's public key: the coordinator's
                                                   `security.client_keys_dir` lets exactly these in
  DIR/private/NAME.key_secret                      each client's / worker's pair (copy to that host only)
"""

from __future__ import annotations

import argparse
import sys

from runtime.keys import make_keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="output directory")
    parser.add_argument("--clients", nargs="+", default=["client", "verifier", "drafter"],
                        help="names of the clients and workers to make key pairs for")
    args = parser.parse_args()
    for path in make_keys(args.dir, args.clients):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
