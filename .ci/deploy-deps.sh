#!/usr/bin/env bash
# System packages for tests/test_redis_sessions.py (a real redis-server) and tests/api/test_tls.py (openssl).
# Python packages (redis, PyYAML, yamllint, kubernetes-validate) come with the project's `test` extra.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
redis-server --version
