"""The code prompts every benchmark script uses (so their numbers compare)."""

from __future__ import annotations

PROMPTS = [
    "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Parse the command line and",
    "class Queue:\n    \"\"\"A simple FIFO queue.\"\"\"\n\n    def __init__(self, maxsize=0):\n",
    "def read_config(path):\n    with open(path) as f:\n        lines = f.readlines()\n    result = {}\n",
    "    def __repr__(self):\n        return '%s(%r)' % (self.__class__.__name__,",
]
