"""Build the data of the lm-eval tasks Tandem ships (configs/lm_eval/*.jsonl) from held-out stdlib code.

    python scripts/build_eval_tasks.py            # rewrites configs/lm_eval/code_lines.jsonl, code_complete.jsonl

Both tasks take a window of 8 lines of a held-out file (workers/training/corpus.py's rule: never
trained on) and ask about the next line:
- `tandem_code_lines` (multiple choice, loglikelihood): which of 4 lines comes next; the 3 wrong ones are
  lines of other held-out files, given the right line's indentation so that indentation gives nothing away.
- `tandem_code_complete` (generate_until): finish the next line, given its first words (greedy, until a
  newline), exact match.
Deterministic (seed 0) for a given standard library; the files in the repository were built from
CPython 3.11's, as the demo models were.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from workers.training.corpus import read_corpus

OUT = Path(__file__).resolve().parents[1] / "configs" / "lm_eval"
SKIPPED = ("encodings/", "pydoc_data/", "lib2to3/tests/data/")  # tables and data, not code
WINDOW = 8  # lines of context


def candidates(text: str) -> list[tuple[str, str]]:
    """(context, next line) pairs of one file, at lines worth guessing (code, not comments or blanks)."""
    lines = text.split("\n")
    pairs = []
    for i in range(WINDOW, len(lines)):
        line = lines[i]
        body = line.strip()
        if 16 <= len(body) <= 80 and not body.startswith(("#", '"', "'")) and all(lines[i - WINDOW: i]):
            pairs.append(("\n".join(lines[i - WINDOW: i]) + "\n", line))
    return pairs


def build(num_choice: int, num_complete: int, seed: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rng = random.Random(seed)
    docs = [d for d in read_corpus("stdlib", "held_out") if not d.name.startswith(SKIPPED)]
    every = [(d.name, pair) for d in sorted(docs, key=lambda d: d.name) for pair in candidates(d.text)]
    picked = rng.sample(every, num_choice + num_complete)
    pool = [(name, line.strip()) for name, (_, line) in every]
    choice_docs: list[dict[str, object]] = []
    for name, (context, line) in picked[:num_choice]:
        indent = line[: len(line) - len(line.lstrip())]
        wrong = [indent + body for other, body in rng.sample(pool, 12) if other != name and body != line.strip()][:3]
        choices = [line, *wrong]
        rng.shuffle(choices)
        choice_docs.append({"id": name, "context": context, "choices": choices, "label": choices.index(line)})
    complete_docs: list[dict[str, object]] = []
    for name, (context, line) in picked[num_choice:]:
        cut = _word_end(line, len(line) - len(line.lstrip()) + len(line.strip()) // 3)
        complete_docs.append({"id": name, "context": context + line[:cut], "target": line[cut:]})
    return choice_docs, complete_docs


def _word_end(line: str, start: int) -> int:
    """The first word boundary at or after `start` (a space or an opening bracket ends a word)."""
    for i in range(start, len(line)):
        if line[i] in " ([{":
            return i
    return start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-choice", type=int, default=32)
    parser.add_argument("--num-complete", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for file, rows in zip(("code_lines.jsonl", "code_complete.jsonl"),
                          build(args.num_choice, args.num_complete, args.seed), strict=True):
        (OUT / file).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"{OUT / file}: {len(rows)} documents")


if __name__ == "__main__":
    main()
