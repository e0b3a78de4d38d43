#!/usr/bin/env bash
# Regenerate tests/fixtures/upgrade_78d94f8: a data directory written by the
# last release with the SQLite event buffer (78d94f8), for the upgrade tests
# (tests/beam_pipelines/runners/local/test_upgrade*.py).
#
#   scripts/make_upgrade_fixture.sh [python]    # default: .venv/bin/python
#
# Checks 78d94f8 out into a temporary git worktree, runs its real server there
# (scripts/upgrade_fixture_driver.py says what it does), and copies the data
# directory here without server logs. The data directory's path is fixed
# (FIXTURE_DATA_DIR below) because the catalog stores absolute paths; the tests
# rewrite it to where they copy the fixture (tests/upgrade_fixture.py).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${1:-.venv/bin/python}
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"  # absolute, the venv's own
FIXTURE_ROOT=/tmp/pdo-upgrade-fixture-78d94f8
OLD_TREE=$(mktemp -d)/old78
OUT=tests/fixtures/upgrade_78d94f8

git worktree add --detach "$OLD_TREE" 78d94f8 >/dev/null
trap 'git worktree remove --force "$OLD_TREE"' EXIT
rm -rf "$FIXTURE_ROOT" && mkdir -p "$FIXTURE_ROOT/data"
# From inside the old tree: ``python -m`` (the server, gunicorn) puts the working
# directory first on sys.path, before PYTHONPATH and any editable install.
(cd "$OLD_TREE" && PYTHONPATH="$OLD_TREE" "$PYTHON" "$REPO/scripts/upgrade_fixture_driver.py" \
    "$FIXTURE_ROOT/data")

rm -rf "$OUT" && mkdir -p "$OUT"
cp "$FIXTURE_ROOT/expected.json" "$OUT/"
cp -a "$FIXTURE_ROOT/data" "$OUT/data"
find "$OUT/data" \( -name 'server-*.log' -o -name '*.lock' \) -delete
echo "$FIXTURE_ROOT/data" > "$OUT/ORIGINAL_DATA_DIR"
du -sh "$OUT"
