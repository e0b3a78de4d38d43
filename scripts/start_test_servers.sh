#!/usr/bin/env bash
# Start the local object-storage servers the tests use (gcp-storage-emulator
# and moto_server, in memory, on free 127.0.0.1 ports) and keep them running
# in the foreground until Ctrl-C. Prints the environment to point clients at them:
#   STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT   (google-cloud-storage, Beam gs://)
#   AWS_ENDPOINT_URL=http://127.0.0.1:PORT        (boto3, Beam s3://; keys: testing/testing)
# pytest does not need this script: tests start the servers as fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" tests/servers.py
