#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs for hpcxfer, idempotent:
#   Debian packages: dataset-fashion-mnist (the quick start's images, offline),
#                    slurm-wlm and munge (the test suite's one-node SLURM cluster);
#   a virtual environment in .venv with hpcxfer and its test tools.
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

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import hpcxfer, pytest, torch, torchvision, submitit" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.hpcxfer-installed ]; then
  echo "setup: installing hpcxfer and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.hpcxfer-installed
fi
