#!/usr/bin/env python3
"""Process one request file for the `requests` queue (seed 000's workers): check it is a
request (JSON with an id and a payload), write the result next to the worker's other
results, and fail with a reason otherwise. The dispatcher files the request in
processed/ on exit 0 or in errors/ with this script's message."""
import json
import os
import sys

path = sys.argv[1]
try:
    req = json.load(open(path))
    rid, payload = req["id"], req["payload"]
except (ValueError, KeyError, TypeError) as e:
    sys.exit(f"not a request: {e!r}")
out = os.path.join(os.path.dirname(path), "results")
os.makedirs(out, exist_ok=True)
result = {"id": rid, "worker": os.environ.get("LOCALDR_WORKER"), "length": len(payload)}
tmp = os.path.join(out, f".{rid}.tmp")
with open(tmp, "w") as f:
    json.dump(result, f)
os.replace(tmp, os.path.join(out, f"{rid}.json"))
print(f"request {rid} done by {result['worker']}")
