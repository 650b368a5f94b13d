"""Train the demo's byte-level BPE tokenizer on the training split of a local corpus.

| flag | default | meaning |
|---|---|---|
| `--corpus` | `stdlib` | `stdlib` (this interpreter's standard library), a text-file directory or a JSONL file |
| `--out` | `models/demo/tokenizer` | output directory (loads with `AutoTokenizer.from_pretrained`) |
| `--vocab-size` | 4096 | vocabulary size incl. `<|pad|>` `<|bos|>` `<|eos|>` (ids 0, 1, 2) |
| `--min-frequency` | 2 | a merge needs a pair seen at least this often |

Only the training split is read (held-out rule: workers/training/corpus.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from workers.training.corpus import read_corpus
from workers.training.tokenizer import save_tokenizer, train_bpe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus", default="stdlib",
                        help="'stdlib', a directory of text files, or a JSONL file with a 'text' field")
    parser.add_argument("--out", default="models/demo/tokenizer", help="output directory")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size incl. special tokens")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count of a merge")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    docs = read_corpus(args.corpus, "train")
    tokenizer = train_bpe(docs, args.vocab_size, args.min_frequency)
    save_tokenizer(tokenizer, args.out)
    report = {"num_documents": len(docs), "num_chars": sum(len(d.text) for d in docs),
              "vocab_size": len(tokenizer), "train_s": round(time.perf_counter() - start, 1)}
    (Path(args.out) / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
