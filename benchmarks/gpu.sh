#!/bin/sh
# GPU throughput of the worker's step (AlexNet 224 px fp32/bf16/fp16 channels_last, and
# the small-set path on synthetic uint8 data already on the GPU), then the streamed ImageNet
# path on a generated tree: nvJPEG decoding images/s and a pre-training's first epoch
# (nvJPEG into the decode cache) against its later ones (reading the cache). About 5
# minutes on one GPU; needs torch, torchvision, PIL, numpy, pyyaml and hpcxfer's own
# dependencies (pydantic, jsonlines). From a checkout:  sh benchmarks/gpu.sh
# (--imagenet-classes 0 skips the ImageNet rows; --imagenet-only runs only them)
set -eu
cd "$(dirname "$0")/.."
PYTHONPATH=. exec "${PYTHON:-python}" -m benchmarks.gpu --seconds "${SECONDS_PER_ROW:-15}" "$@"
