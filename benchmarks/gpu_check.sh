#!/usr/bin/env bash
# GPU checks in at most 9.5 minutes: latency on CUDA (issue 13), then the deployment-regime
# search benchmark's FLOPs cells on CUDA (issue 14).
#
#   bash benchmarks/gpu_check.sh   # writes benchmarks/results/latency_gpu.md and
#                                  # benchmarks/results/search_regime_gpu.md
#
# Latency: benchmarks/latency.py --device cuda times dense and uniform plans (round_to None / 8)
# of ResNet-18 and MobileNetV2 in eager PyTorch and torch.compile with CUDA events, alternating
# rounds, and writes each figure's robust CV (at most 2 minutes).
#
# Search: benchmarks/search_regime.py --device cuda trains the dense ResNet-20 and VGG-8 to
# convergence and runs the FLOPs cells (uniform, global, the group-norm recipe, autoprune) with
# fine-tunes on the GPU (the data stays on the CPU and moves batch by batch). 3 seeds are tried
# first (6.7 minutes); if they do not fit, 1 seed in what is left. Needs the project's
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
out=benchmarks/results/search_regime_gpu.md
# the deployment regime's FLOPs cells (issue 14): dense nets trained to convergence on the GPU,
# searches and final fine-tunes there; every finished cell is kept, so a second call with fewer
# seeds renders what the first one finished
args=(--device cuda --arch resnet20 vgg8 --flops 0.3 0.15 0.07 --latency --jobs 2
      --proxy-arch none --out "$out")
timeout 400 python benchmarks/search_regime.py "${args[@]}" --seeds 3
rc=$?
if [ "$rc" -eq 124 ]; then
    left=$(( 560 - ($(date +%s) - start) ))
    echo "gpu_check: 3 seeds did not fit; 1 seed in the ${left} s left" >&2
    timeout "$left" python benchmarks/search_regime.py "${args[@]}" --seeds 1
    rc=$?
fi
echo "gpu_check: exit $rc after $(( $(date +%s) - start )) s; table in $out"
exit "$rc"
