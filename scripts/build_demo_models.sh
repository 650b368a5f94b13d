#!/usr/bin/env bash
# Rebuild the demo models from scratch on CPU: tokenizer, target (pre-training, then unlikelihood
# fine-tuning), AR draft, Falcon drafter (and the CSGD ablation), its self-distillation fine-tuning on the
# target's own continuations, then the evaluations. Flags are exactly
# those used for the shipped checkpoints (models/demo/README.md). About 4 hours on 2 CPU cores.
# Training checkpoints go to $CKPT_DIR; rerunning with RESUME=1 continues interrupted trainings (the
# target can be trained in pieces across sessions this way). STAGES picks what runs, in this order:
#   tokenizer target unlikelihood draft falcon distill ablation hidden eval
#   (default: all but ablation; WITH_ABLATION=1 adds it)
# The pre-trained target stays in $CKPT_DIR/target-mle; the shipped one is its fine-tuned version.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-models/demo}
CKPT_DIR=${CKPT_DIR:-/tmp/tandem_build}
RESUME_FLAG=$([[ "${RESUME:-0}" == 1 ]] && echo --resume || true)
STAGES=${STAGES:-"tokenizer target unlikelihood draft falcon distill $([[ "${WITH_ABLATION:-0}" == 1 ]] && echo ablation) hidden eval"}
mkdir -p "$OUT" "$CKPT_DIR"
stage() { [[ " $STAGES " == *" $1 "* ]]; }

if stage tokenizer; then
python scripts/train_tokenizer.py --corpus stdlib --out "$OUT/tokenizer" --vocab-size 4096 --min-frequency 2
fi

if stage target; then
python scripts/train_target.py --corpus stdlib --tokenizer "$OUT/tokenizer" --out "$CKPT_DIR/target-mle" \
    --hidden-size 192 --num-layers 14 --num-heads 3 --num-kv-heads 1 --intermediate-size 768 \
    --max-position-embeddings 1024 --seq-len 256 --batch-size 8 --steps 4000 \
    --lr 3e-3 --warmup-steps 100 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
    --eval-every 250 --eval-windows 64 --seed 0 --save-dtype float16 --compile \
    --checkpoint "$CKPT_DIR/target.pt" --checkpoint-every 50 --log-every 25 $RESUME_FLAG
fi

if stage unlikelihood; then
# sequence-level unlikelihood fine-tuning: greedy decoding of the pre-trained model loops
python scripts/train_target.py --corpus stdlib --tokenizer "$OUT/tokenizer" --init "$CKPT_DIR/target-mle" \
    --out "$OUT/target" --unlikelihood 1.0 --ul-prefix 64 --ul-new 96 --ul-ngram 4 --ul-batch 8 \
    --seq-len 256 --batch-size 8 --steps 400 --lr 5e-4 --warmup-steps 20 --min-lr-ratio 0.1 \
    --weight-decay 0.1 --grad-clip 1.0 --eval-every 50 --eval-windows 64 --eval-prompts 8 --seed 0 \
    --save-dtype float16 --checkpoint "$CKPT_DIR/target-ul.pt" --checkpoint-every 25 --log-every 10 $RESUME_FLAG
fi

if stage draft; then
python scripts/train_draft.py --corpus stdlib --tokenizer "$OUT/tokenizer" --out "$OUT/draft" \
    --teacher "$OUT/target" --hard-weight 0.0 \
    --hidden-size 192 --num-layers 2 --num-heads 3 --num-kv-heads 1 --intermediate-size 512 \
    --max-position-embeddings 1024 --seq-len 256 --batch-size 16 --steps 250 \
    --lr 3e-3 --warmup-steps 20 --min-lr-ratio 0.1 --weight-decay 0.1 --grad-clip 1.0 \
    --eval-every 125 --eval-windows 64 --seed 0 --save-dtype float16 --compile \
    --checkpoint "$CKPT_DIR/draft.pt" --checkpoint-every 25 $RESUME_FLAG
fi

# τ is measured afterwards by eval_drafters.py on the same prompts for every drafter (--eval-prompts 0)
FALCON_FLAGS=(--corpus stdlib --target "$OUT/target" --num-layers 2 --block-size 2 --seq-len 256 --batch-size 8
    --steps 800 --lr 2e-3 --warmup-steps 30 --min-lr-ratio 0.1 --weight-decay 0.0 --grad-clip 1.0
    --feature-weight 1.0 --distill-weight 1.0 --glance-ratio 0.5
    --eval-every 200 --eval-windows 32 --eval-prompts 0
    --seed 0 --save-dtype float16 --compile --checkpoint-every 25)

if stage falcon; then
python scripts/train_drafter.py "${FALCON_FLAGS[@]}" --out "$OUT/falcon" --checkpoint "$CKPT_DIR/falcon.pt" $RESUME_FLAG
# kept as the ablation's glancing arm; the shipped drafter is then trained on to 6,400 steps
rm -rf "$CKPT_DIR/falcon-800" && cp -r "$OUT/falcon" "$CKPT_DIR/falcon-800"
python scripts/train_drafter.py "${FALCON_FLAGS[@]}" --steps 6400 --out "$OUT/falcon" \
    --checkpoint "$CKPT_DIR/falcon.pt" --resume
# the stdlib-only drafter: the distill stage fine-tunes it (and the eval compares the two)
rm -rf "$CKPT_DIR/falcon-stdlib" && cp -r "$OUT/falcon" "$CKPT_DIR/falcon-stdlib"
fi

if stage distill; then
# self-distillation: the target continues 3,968 prompts cut from training files of the stdlib and site-packages
# (the shortest 62 of 128 batches of 64; two processes of one thread), then the drafter is fine-tuned on
# half self-generated, half stdlib windows
for shard in 0 1; do
    python scripts/gen_distill_data.py --target "$OUT/target" --out "$CKPT_DIR/selfgen.$shard.jsonl" \
        --sources stdlib,site-packages --num-prompts 8192 --min-prompt-tokens 32 --max-prompt-tokens 128 \
        --short-share 0.3 --short-min-tokens 8 --max-new-tokens 160 --batch-size 64 --max-batches 62 \
        --sampled-share 0.2 --temperature 0.7 --seed 0 --shard $shard --num-shards 2 --num-threads 1 &
done
wait
python scripts/gen_distill_data.py --merge "$CKPT_DIR/selfgen.0.jsonl,$CKPT_DIR/selfgen.1.jsonl" \
    --out "$CKPT_DIR/selfgen.jsonl"
python scripts/train_drafter.py --corpus stdlib --target "$OUT/target" \
    --extra-corpus "$CKPT_DIR/selfgen.jsonl" --extra-share 0.5 --init "$CKPT_DIR/falcon-stdlib" \
    --out "$OUT/falcon" --num-layers 2 --block-size 2 --seq-len 256 --batch-size 8 --steps 800 \
    --lr 7e-4 --warmup-steps 50 --min-lr-ratio 0.1 --weight-decay 0.0 --grad-clip 1.0 \
    --feature-weight 1.0 --distill-weight 1.0 --glance-ratio 0.5 --eval-every 200 --eval-windows 32 \
    --eval-prompts 0 --seed 0 --save-dtype float16 --checkpoint "$CKPT_DIR/falcon-sd.pt" --checkpoint-every 25 \
    --log-every 25 --num-threads 1 $RESUME_FLAG
fi

if stage ablation; then
    # CSGD ablation: the same run without glancing (the shipped drafter is the glancing arm)
    python scripts/train_drafter.py "${FALCON_FLAGS[@]}" --no-glance --out "$CKPT_DIR/falcon-noglance" \
        --checkpoint "$CKPT_DIR/falcon-noglance.pt" $RESUME_FLAG
fi

if stage hidden; then
# Hidden Transfer maps: layer 10, k = 2, chosen by the sweep in models/demo/README.md ("Hidden Transfer")
python scripts/train_hidden.py --target "$OUT/target" --corpus stdlib --out "$OUT/hidden" --layer 10 --num-offsets 2 \
    --num-samples 1536 --eval-samples 64 --prompt-tokens 64 --new-tokens 192 --gen-batch-size 64 \
    --batch-size 8 --anchors-per-sample 96 --steps 600 --lr 1e-2 --warmup-steps 20 --eval-every 200 --seed 0 \
    --save-dtype float16 --checkpoint "$CKPT_DIR/hidden.pt" --data-cache "$CKPT_DIR/hidden-data.pt" \
    --checkpoint-every 50 $RESUME_FLAG
fi

if stage eval; then
EVAL_FLAGS=(--target "$OUT/target" --corpus stdlib --num-prompts 20 --min-prompt-tokens 64 --max-prompt-tokens 128
    --max-new-tokens 64 --trees default,static,wide --seed 0)
python scripts/eval_drafters.py "${EVAL_FLAGS[@]}" --falcon "$OUT/falcon" --draft "$OUT/draft" --json "$OUT/eval.json"
if [[ -d "$CKPT_DIR/falcon-noglance" ]]; then  # the ablation: both arms at 800 steps
    python scripts/eval_drafters.py "${EVAL_FLAGS[@]}" --falcon "$CKPT_DIR/falcon-800" --draft "" --no-ngram \
        --json "$OUT/eval_glance800.json"
    python scripts/eval_drafters.py "${EVAL_FLAGS[@]}" --falcon "$CKPT_DIR/falcon-noglance" --draft "" --no-ngram \
        --json "$OUT/eval_noglance.json"
fi
# τ per prompt style, the stdlib-only drafter against the self-distilled one (default tree)
if [[ -d "$CKPT_DIR/falcon-stdlib" ]]; then
    python scripts/eval_drafters.py "${EVAL_FLAGS[@]}" --trees default --draft "" --no-ngram \
        --styles stdlib,handwritten,bench,docstring,tests --falcon "$CKPT_DIR/falcon-stdlib,$OUT/falcon" \
        --json "$OUT/eval_styles.json"
    python scripts/eval_drafters.py "${EVAL_FLAGS[@]}" --trees static,wide --draft "" --no-ngram \
        --styles stdlib,handwritten,bench,docstring,tests --falcon "$CKPT_DIR/falcon-stdlib,$OUT/falcon" \
        --json "$OUT/eval_styles_trees.json"
fi
python scripts/eval_target.py --target "$OUT/target" --falcon "$OUT/falcon" --draft "$OUT/draft" \
    --json "$OUT/quality.json"
HIDDEN_FLAGS=(--target "$OUT/target" --hidden "$OUT/hidden" --falcon "$OUT/falcon" --corpus stdlib --num-prompts 20
    --max-new-tokens 64 --seed 0)
python scripts/eval_hidden.py "${HIDDEN_FLAGS[@]}" --json "$CKPT_DIR/eval_hidden_async.json"
python scripts/eval_hidden.py "${HIDDEN_FLAGS[@]}" --arms falcon,falcon+hidden --mode sync --json "$CKPT_DIR/eval_hidden_sync.json"
python scripts/eval_hidden.py "${HIDDEN_FLAGS[@]}" --arms hidden --no-lookup --cost flat --json "$CKPT_DIR/eval_hidden_pure.json"
python -c 'import json, sys; json.dump({"runs": [json.load(open(f)) for f in sys.argv[2:]]}, open(sys.argv[1], "w"), indent=2)' \
    "$OUT/eval_hidden.json" "$CKPT_DIR"/eval_hidden_{async,sync,pure}.json
fi
