#!/usr/bin/env bash
# The GPU check, prepared to run in one go (about 9 minutes) on a machine with one CUDA GPU:
#   1. the tests that use CUDA (-m gpu: lossless on cuda in fp32, batched rows against batch-1 in fp32/bf16)
#   2. the load bench at concurrency 1 and 16 on the demo models (configs/one_gpu.yaml, fp32), Hidden Transfer
#      alone among the methods (its slot rows should cost next to nothing on a GPU)
#   3. the load bench in scale mode: a random-weight Llama-3-8B-like target in bf16 with an oracle drafter
# Everything goes to one folder: bash scripts/gpu_check.sh [OUT_DIR]   (default: $OUT, else gpu_check_out)
# Python packages missing on the GPU image (pyzmq, pytest-asyncio, ...) may come as wheels in .whl/
# (git-ignored), fetched beforehand for its Python, e.g.:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl pyzmq pytest-asyncio
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, remember a failure
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$out/summary.txt"
  local begin=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - begin)) s" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$name.log" | sed 's/^/   /' | tee -a "$out/summary.txt"
  [ "$rc" -eq 0 ] || status=1
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__)"; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt" | tee -a "$out/summary.txt"
step tests 130 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/workers/test_cuda.py
step demo_load 190 "$py" scripts/bench.py --config configs/one_gpu.yaml --concurrency 1,16 --num-requests 16 \
  --methods 'hf-generate,hf-generate-batch,tandem-off,tandem-async-falcon,tandem-sync-falcon,tandem-async-hidden' \
  --max-new-tokens 64 --out "$out/demo_load"
step scale_load 200 "$py" scripts/bench.py --config configs/one_gpu.yaml --scale --concurrency 1,16 \
  --num-requests 16 --methods 'hf-generate,tandem-off,tandem-async-oracle' --max-new-tokens 64 \
  --out "$out/scale_load"
for folder in demo_load scale_load; do  # the tables come back beside the logs (two folders down at most)
  [ -f "$out/$folder/results_load.md" ] && cp "$out/$folder/results_load.md" "$out/${folder}.md"
done
echo "gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED) (see $out/summary.txt)"
exit $status
