#!/usr/bin/env bash
# What a fresh Debian/Ubuntu machine needs for hpcxfer, idempotent. Two levels:
#   scripts/setup.sh quickstart   what `make quickstart` needs: Debian's dataset-fashion-mnist
#                                 (the images, offline) and a .venv with hpcxfer[train];
#   scripts/setup.sh test         (the default) that, plus slurm-wlm and munge (the test
#                                 suite's one-node SLURM cluster) and the test tools ([test]).
# Torch: where no NVIDIA GPU is present, the CPU build is installed from PyTorch's own index
# when that index can be reached (about 200 MB instead of pip's default CUDA build of
# several GB); otherwise pip's default torch, whatever the configured indexes offer.
# Set HPCXFER_SKIP_APT=1 to skip the Debian packages (e.g. without root).
set -euo pipefail
cd "$(dirname "$0")/.."

level=${1:-test}
case "$level" in
  quickstart) packages=(dataset-fashion-mnist); extras=train; check="torch, torchvision, tensorboard" ;;
  test) packages=(dataset-fashion-mnist slurm-wlm munge); extras=train,test; check="torch, torchvision, tensorboard, pytest" ;;
  *) echo "setup: unknown level '$level': use quickstart or test" >&2; exit 2 ;;
esac

if [ "${HPCXFER_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

# Python 3.11 or newer (workers run `python -P`); PYTHON=... chooses one.
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      python=$candidate
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "setup: hpcxfer needs Python 3.11 or newer; set PYTHON to one" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi

cpu_index=https://download.pytorch.org/whl/cpu
stamp=.venv/.hpcxfer-installed-${extras/,/-}
if ! .venv/bin/python -c "import hpcxfer, $check" 2>/dev/null || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing hpcxfer[$extras] and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null || [ -e /proc/driver/nvidia/version ]; then
      echo "setup: an NVIDIA GPU is present: pip's default torch (a CUDA build)"
    elif .venv/bin/python -c "import urllib.request as u; u.urlopen('$cpu_index/torch/', timeout=10)" 2>/dev/null \
         && .venv/bin/python -m pip install -q --index-url "$cpu_index" torch torchvision; then
      echo "setup: no NVIDIA GPU: installed torch's CPU build from $cpu_index"
    else
      echo "setup: no NVIDIA GPU, and $cpu_index cannot be reached: pip's default torch" \
           "(on PyPI a CUDA build of several GB)"
    fi
  fi
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi
