#!/usr/bin/env bash
# A Flink distribution (FLINK_HOME) from PyPI alone, for the Flink tests.
#
# Flink's own tarball lives on archive.apache.org / Maven mirrors, which CI
# machines here do not reach; PyPI carries the same bits split in two:
#   apache-flink            (wheel)  pyflink/bin/*.sh, pyflink/conf/
#   apache-flink-libraries  (sdist)  deps/lib/flink-dist-*.jar ..., deps/plugins/,
#                                    deps/bin/bash-java-utils.jar
# Both pin an apache-beam that conflicts with ours, so they are downloaded
# with --no-deps and unpacked here, never installed into the venv.
#
# Usage: scripts/flink_home.sh [DEST]   (default .flink/flink-$FLINK_VERSION)
# Idempotent: a DEST holding lib/flink-dist-$FLINK_VERSION.jar is left alone.
set -euo pipefail

FLINK_VERSION=1.20.3
DEST=${1:-.flink/flink-$FLINK_VERSION}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if [ -f "$DEST/lib/flink-dist-$FLINK_VERSION.jar" ] && [ -x "$DEST/bin/jobmanager.sh" ]; then
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/flink-home.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Only the wheel's shell scripts and configuration are used, identical in every
# build: always take the CPython 3.11 x86_64 one, whatever runs this script.
"$PY" -m pip download -q --no-deps --dest "$work/dl" --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 "apache-flink==$FLINK_VERSION"
"$PY" -m pip download -q --no-deps --dest "$work/dl" "apache-flink-libraries==$FLINK_VERSION"

# The wheel: scripts and default configuration.
"$PY" -m zipfile -e "$work"/dl/apache_flink-"$FLINK_VERSION"-*.whl "$work/wheel"
# The sdist: the jars.
tar -xzf "$work/dl/apache-flink-libraries-$FLINK_VERSION.tar.gz" -C "$work"
libs="$work/apache-flink-libraries-$FLINK_VERSION/deps"

stage="$work/flink-$FLINK_VERSION"
mkdir -p "$stage/log"
cp -r "$work/wheel/pyflink/bin" "$work/wheel/pyflink/conf" "$stage/"
cp -r "$libs/lib" "$libs/plugins" "$stage/"
cp "$libs/bin/bash-java-utils.jar" "$stage/bin/"
chmod +x "$stage"/bin/*.sh "$stage/bin/flink"

mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST"
mv "$stage" "$DEST"
echo "FLINK_HOME=$DEST"
