#!/usr/bin/env bash
# GPU checks in at most 9.5 minutes: latency on CUDA (issue 13), then the deployment-regime
# search benchmark's FLOPs cells on CUDA (issue 14).
#
#   bash benchmarks/gpu_check.sh   # writes benchmarks/results/latency_gpu.md and
#                                  # benchmarks/results/search_regime_gpu.md
#
# Latency: benchmarks/latency.py --device cuda times dense and uniform plans (round_to None / 8)
# of ResNet-18 and MobileNetV2 in eager PyTorch and torch.compile with CUDA events, alternating
# rounds, and writes each figure's robust CV (at most 3 minutes: on an H200 on 2026-12-04 the
# compiles alone took 40 s for ResNet-18 and 48 s for MobileNetV2 at batch 1, and 2 minutes
# were not enough).
#
# Search: benchmarks/search_regime.py --device cuda trains the dense ResNet-20 to convergence
# (51 s there) and runs two FLOPs cells, one seed (uniform, global, the group-norm recipe,
# autoprune) with fine-tunes on the GPU and timings on the CPU runtime the cells model
# (--latency-device cpu inside autoprune); the data stays on the CPU and moves batch by batch.
# The group-norm recipe's sparsity training took 160-176 s per cell there, so three seeds of
# both nets (the first version of this script) did not fit. Needs the project's dependencies
# importable (pip install -e . or carried wheels) and Fashion-MNIST in
# /usr/share/datasets/fashion-mnist.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' || { echo "gpu_check: CUDA is not available here" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print("GPU:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
start=$(date +%s)
timeout 180 python benchmarks/latency.py --device cuda --models resnet18 mobilenet_v2 \
    --runtimes eager compile --batches 1 64 --rounds 3 --out benchmarks/results/latency_gpu.md
echo "gpu_check: latency exit $? after $(( $(date +%s) - start )) s"
out=benchmarks/results/search_regime_gpu.md
left=$(( 560 - ($(date +%s) - start) ))
timeout "$left" python benchmarks/search_regime.py --device cuda --arch resnet20 \
    --flops 0.3 0.15 --latency --seeds 1 --jobs 2 --proxy-arch none --out "$out"
rc=$?
echo "gpu_check: exit $rc after $(( $(date +%s) - start )) s; table in $out"
exit "$rc"
