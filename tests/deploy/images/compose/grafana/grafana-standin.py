"""Stand-in for grafana/grafana-oss in the compose test (no Debian package exists).

It proves nothing about Grafana. It checks what compose gives the container - the
provisioning folders with a Prometheus datasource file and a dashboard provider, the home
dashboard (GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH) as valid JSON, the admin credentials
set - and exits 1 naming what is missing; then it answers GET /api/health on
GF_SERVER_HTTP_ADDR:GF_SERVER_HTTP_PORT, so the compose healthcheck and the services
depending on it run as with Grafana.
"""

import http.server
import json
import os
import signal
import sys
from pathlib import Path

# PID 1 gets no default SIGTERM action: without a handler `docker stop` waits its whole
# grace period, then kills.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

problems = []
for folder in ("datasources", "dashboards"):
    if not any(Path("/etc/grafana/provisioning", folder).glob("*.yml")):
        problems.append(f"no provisioning file in /etc/grafana/provisioning/{folder}")
home = os.environ.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
try:
    json.loads(Path(home).read_text())
except (OSError, ValueError) as exc:
    problems.append(f"home dashboard {home!r}: {exc}")
for name in ("GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD"):
    if not os.environ.get(name):
        problems.append(f"{name} is not set")
if problems:
    print("grafana stand-in:", "; ".join(problems), file=sys.stderr)
    sys.exit(1)


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        found = self.path == "/api/health"
        body = json.dumps({"database": "ok", "standin": True} if found else {}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


address = os.environ.get("GF_SERVER_HTTP_ADDR") or "0.0.0.0"
port = int(os.environ.get("GF_SERVER_HTTP_PORT", "3000"))
print(f"grafana stand-in: serving /api/health on {address}:{port}", flush=True)
http.server.ThreadingHTTPServer((address, port), Health).serve_forever()
