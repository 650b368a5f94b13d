"""Train the AR draft model: scripts/train_target.py with draft-sized defaults, distilled from the target.

Same flags as scripts/train_target.py (see its table); only these defaults differ:

| flag | default here |
|---|---|
| `--out` | `models/demo/draft` |
| `--teacher` | `models/demo/target` (soft cross-entropy to the target's next-token distribution) |
| `--hidden-size` / `--num-layers` | 192 / 2 |
| `--num-heads` / `--num-kv-heads` | 3 / 1 (head dim 64, like the target) |
| `--intermediate-size` | 512 |
| `--steps` / `--batch-size` | 250 / 16 |
| `--lr` / `--warmup-steps` | 3e-3 / 20 |
| `--eval-every` | 125 |

Pass `--teacher ''` for plain next-token training on the corpus instead.
"""

from __future__ import annotations

from train_target import build_parser, main

DRAFT_DEFAULTS = {"out": "models/demo/draft", "teacher": "models/demo/target", "hidden_size": 192,
                  "num_layers": 2, "num_heads": 3, "num_kv_heads": 1, "intermediate_size": 512,
                  "steps": 250, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "eval_every": 125}


if __name__ == "__main__":
    parser = build_parser(__doc__ or "")
    parser.set_defaults(**DRAFT_DEFAULTS)
    main(parser=parser)
