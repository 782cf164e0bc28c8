#!/usr/bin/python3
"""Stand-in for orthancteam's /probes/test-aliveness.py: exit 0 when Orthanc answers
GET /system with the given credentials. The port is ORTHANC_STANDIN_HTTP_PORT (8042 by
default), which the compose test sets with the HttpPort it gives Orthanc."""

import argparse
import base64
import os
import sys
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--user", required=True)
parser.add_argument("--pwd", required=True)
args = parser.parse_args()
port = os.environ.get("ORTHANC_STANDIN_HTTP_PORT", "8042")
request = urllib.request.Request(f"http://127.0.0.1:{port}/system")
credentials = base64.b64encode(f"{args.user}:{args.pwd}".encode()).decode()
request.add_header("Authorization", f"Basic {credentials}")
try:
    with urllib.request.urlopen(request, timeout=3) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
