#!/bin/sh
# GPU throughput of the worker's step (AlexNet 224 px fp32/bf16/fp16 channels_last, and
# the small-set path on synthetic uint8 data already on the GPU). About 3 minutes on one
# GPU; needs only torch and torchvision. From a checkout:  sh benchmarks/gpu.sh
set -eu
cd "$(dirname "$0")/.."
PYTHONPATH=. exec "${PYTHON:-python}" -m benchmarks.gpu --seconds "${SECONDS_PER_ROW:-15}" "$@"
