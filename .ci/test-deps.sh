#!/usr/bin/env bash
# What the test suite needs beside the project's own Python packages (`pip install -e ".[test]"`):
# redis-server and openssl (Redis replica and TLS tests) and a real Triton server in .venv-triton.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deploy-deps.sh
bash .ci/triton-venv.sh
