#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs for hpcxfer, idempotent:
#   Debian packages: dataset-fashion-mnist (the quick start's images, offline),
#                    slurm-wlm and munge (the test suite's one-node SLURM cluster);
#   a virtual environment in .venv with hpcxfer, what trains tasks ([train]) and the test tools.
# Set HPCXFER_SKIP_APT=1 to skip the Debian packages (e.g. without root).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(dataset-fashion-mnist slurm-wlm munge)
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
if ! .venv/bin/python -c "import hpcxfer, pytest, torch, torchvision, tensorboard" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.hpcxfer-installed ]; then
  echo "setup: installing hpcxfer and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[train,test]'
  touch .venv/.hpcxfer-installed
fi
