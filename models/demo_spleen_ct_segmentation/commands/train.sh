#!/usr/bin/env bash
# Train the DEMO spleen CT segmentation model on synthetic abdominal phantoms.
# Usage: commands/train.sh [--steps N] [--seed S] [--num-train N] [--out PATH] ...
# Works from any working directory; uses whatever `python` is on PATH.
set -euo pipefail
MMAR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec python "$MMAR/commands/train.py" "$@"
