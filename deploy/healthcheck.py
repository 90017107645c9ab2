"""Container HEALTHCHECK: GET /health on this container's aiaa-server; exit 0 when it answers 200, else 1.

Reads the server's own settings from the environment (AIAA_PORT, AIAA_SSL_CERTFILE), so it
follows the server to HTTPS. Standard library only: the image has no curl, and importing the server would be
slow. The certificate is not verified: it names the public host, not 127.0.0.1.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def health_url(environ: dict[str, str]) -> str:
    scheme = "https" if environ.get("AIAA_SSL_CERTFILE", "").strip() else "http"
    port = environ.get("AIAA_PORT", "").strip() or "5000"
    return f"{scheme}://127.0.0.1:{port}/health"


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else health_url(dict(os.environ))
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
