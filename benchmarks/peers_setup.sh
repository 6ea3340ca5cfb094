#!/usr/bin/env bash
# Creates benchmarks/.peers: a separate virtualenv holding the peer drift detectors the
# benchmark compares against (alibi-detect with its PyTorch backend, Evidently). They are not
# project dependencies: alibi-detect pins numpy<2, which the project does not.
#
#   bash benchmarks/peers_setup.sh            # once; benchmarks/detectors.py then finds it
#   PYTHON=python3.11 bash benchmarks/peers_setup.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.peers"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned, so that alibi-detect's "torch" requirement is met by the CPU build
# already on disk rather than pulling a CUDA build.
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet \
  "numpy<2" "pandas<3" "alibi-detect[torch]" "evidently>=0.7,<0.8" \
  "threadpoolctl" "psutil" "torch==2.13.0"
"$venv/bin/python" - <<'PY'
import alibi_detect, evidently, numpy, torch
print("peers ready:", "alibi-detect", alibi_detect.__version__, "evidently", evidently.__version__,
      "numpy", numpy.__version__, "torch", torch.__version__)
PY
