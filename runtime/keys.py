"""Making a deployment's CURVE key files (scripts/make_keys.py) in the layout `security:` expects."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import zmq.auth


def make_keys(directory: str | os.PathLike[str], names: list[str]) -> list[Path]:
    """The coordinator's pair plus one pair per name; public keys of the names go to `clients/`.

    Returns the files written. Secret files are readable by their owner only.
    """
    root = Path(directory)
    public_dir, private_dir = root / "clients", root / "private"
    for folder in (root, public_dir, private_dir):
        folder.mkdir(parents=True, exist_ok=True)
    written = [Path(p) for p in zmq.auth.create_certificates(str(root), "server")]
    for name in names:
        public, secret = (Path(p) for p in zmq.auth.create_certificates(str(private_dir), name))
        written += [Path(shutil.move(str(public), public_dir / public.name)), secret]
    for path in written:
        if path.name.endswith(".key_secret"):
            path.chmod(0o600)
    return written
