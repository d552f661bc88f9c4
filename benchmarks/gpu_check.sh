#!/usr/bin/env bash
# GPU checks in at most 9.5 minutes: latency on CUDA (issue 13), then the search-quality
# benchmark on CUDA (issue 4).
#
#   bash benchmarks/gpu_check.sh   # writes benchmarks/results/latency_gpu.md and
#                                  # benchmarks/results/search_quality_gpu.md
#
# Latency: benchmarks/latency.py --device cuda times dense and uniform plans (round_to None / 8)
# of ResNet-18 and MobileNetV2 in eager PyTorch and torch.compile with CUDA events, alternating
# rounds, and writes each figure's robust CV (at most 2 minutes).
#
# Fine-tunes, dense training and latency run on the GPU (the data stays on the CPU and moves
# batch by batch; candidates are fitted with round_to=8 for tensor cores). The full benchmark
# (both architectures, 3 budgets, 3 seeds) is tried first with a 5.5-minute limit; if it does not
# fit, the largest slice that does (1 seed) runs in what is left. Needs the project's
# dependencies importable (pip install -e . or a carried virtual environment).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' || { echo "gpu_check: CUDA is not available here" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
start=$(date +%s)
timeout 120 python benchmarks/latency.py --device cuda --models resnet18 mobilenet_v2 \
    --runtimes eager compile --batches 1 64 --rounds 3 --out benchmarks/results/latency_gpu.md
echo "gpu_check: latency exit $? after $(( $(date +%s) - start )) s"
out=benchmarks/results/search_quality_gpu.md
timeout 330 python benchmarks/search_quality.py --device cuda --arch resnet vgg \
    --budgets 0.4 0.2 0.1 --seeds 3 --trials 12 --jobs 2 --out "$out"
rc=$?
if [ "$rc" -eq 124 ]; then
    left=$(( 560 - ($(date +%s) - start) ))
    echo "gpu_check: the full run did not fit in 5.5 min; 1 seed in the ${left} s left" >&2
    timeout "$left" python benchmarks/search_quality.py --device cuda --arch resnet vgg \
        --budgets 0.4 0.2 0.1 --seeds 1 --trials 12 --jobs 2 --spearman-candidates 32 \
        --out "$out"
    rc=$?
fi
echo "gpu_check: exit $rc after $(( $(date +%s) - start )) s; table in $out"
exit "$rc"
