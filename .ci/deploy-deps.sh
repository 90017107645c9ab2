#!/usr/bin/env bash
# System packages for tests/test_redis_sessions.py (a real redis-server), tests/api/test_tls.py (openssl), tests/ui
# (chromium, chromium-driver: the web annotator in a real headless browser) and the
# DICOMweb datastore tests (a real Orthanc PACS with its DICOMweb plugin: tests/support/orthanc.py starts its own
# on a free loopback port; on a host with systemd, Debian's package also enables a system Orthanc service).
# Python packages (redis, PyYAML, yamllint, kubernetes-validate) come with the project's `test` extra.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)  # /usr/sbin: not on every PATH
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
# tests/ui: the web annotator in a real headless Chromium, driven by selenium through Debian's chromedriver
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
redis-server --version
chromium --version
"$(command -v Orthanc || echo /usr/sbin/Orthanc)" --version | sed -n 1p
