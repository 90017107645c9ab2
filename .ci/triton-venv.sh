#!/usr/bin/env bash
# Builds .venv-triton: a real Triton Inference Server (CPU) for tests/engines/test_triton.py.
#
# The PyPI wheel nvidia-pytriton ships a real `tritonserver` binary with the Python backend only. That backend's
# stub embeds the Python of the interpreter that runs it and imports numpy (which must be <2 for this build) and,
# in our generated model.py, torch; so it gets its own venv rather than sharing .venv (numpy 2).
# Usage: .ci/triton-venv.sh [VENV_DIR]   (default: .venv-triton at the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-.venv-triton}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pytriton, numpy, torch" 2>/dev/null; then
    echo "triton venv $venv already installed"
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# The CPU build of torch; a bare `torch` requirement would pull a CUDA build.
"$venv/bin/python" -m pip install --quiet torch==2.13.0
"$venv/bin/python" -m pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2"
"$venv/bin/python" - <<'PY'
import pathlib, pytriton
binary = pathlib.Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
assert binary.is_file(), f"{binary} missing"
print(f"tritonserver at {binary}")
PY
