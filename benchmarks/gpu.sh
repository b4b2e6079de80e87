#!/usr/bin/env bash
# Accelerator benchmark of jacdc: the fast ACDC engine, EAP and an SP lambda sweep on a
# random-weight GPT-2-small-shaped model with IOI-shaped data (batch 100, 16 tokens); JSON in
# benchmarks/results/gpu.json. Finishes in about 7 minutes on one H100 (--budget-s, default 420).
#
#   benchmarks/gpu.sh                      # the accelerator run
#   benchmarks/gpu.sh --small --out F.json # a tiny model on CPU in seconds (the test suite)
#
# Needs jax (with CUDA or TPU support), equinox, jaxtyping and optax; jacdc itself is used from
# this checkout whether or not it is installed (benchmarks/gpu.py maps models/ and tasks/ to
# jacdc.models and jacdc.tasks). PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
for arg in "$@"; do
    if [ "$arg" = "--small" ]; then
        export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
    fi
done
# JAX preallocates 75% of an accelerator's memory by default; the memory model sizes the SP
# sweep from what the allocator may use, so let it use nearly all of the device.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec "${PYTHON:-python3}" benchmarks/gpu.py "$@"
