"""The image's HEALTHCHECK: exit 0 while this replica's /readyz answers 200, else 1.

/readyz is 503 while a model loads and from the moment SIGTERM starts the drain, so a draining replica
turns unhealthy at once. Standard library only: the slim image has no curl.
"""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('EMBEDGATE_PORT', '8080')}/readyz"
try:
    with urllib.request.urlopen(url, timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as err:
    print(f"{url}: {err}", file=sys.stderr)
    sys.exit(1)
