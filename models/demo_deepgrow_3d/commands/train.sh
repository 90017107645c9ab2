#!/usr/bin/env bash
# Train the DEMO DeepGrow 3D model on synthetic shapes; writes models/model.ts.
# Usage: commands/train.sh [--minutes M] [--seed S] [--batch B] [--threads T] [--ckpt PATH] ...
set -euo pipefail
MMAR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec python "$MMAR/commands/train.py" "$@"
