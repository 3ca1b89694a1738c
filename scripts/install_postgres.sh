#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for the annotation-app tests that run on PostgreSQL
# (tests/annotate with POSTTRAIN_TEST_PG_URL=auto start a throwaway cluster under /tmp with them).
# Idempotent: does nothing when /usr/lib/postgresql/*/bin/initdb is already there. Needs root (or
# sudo) and apt; never asks a question. No cluster is started here: the tests start their own.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

found() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

if found; then
  echo "postgresql already installed: $(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "error: installing postgresql needs root (or sudo); run as root" >&2
    exit 1
  fi
fi

$SUDO apt-get update -q </dev/null
# Debian's package creates the `postgres` user that the tests run the throwaway server as.
$SUDO apt-get install -y -q --no-install-recommends postgresql </dev/null

if ! found; then
  echo "error: apt-get finished but /usr/lib/postgresql/*/bin/initdb is missing" >&2
  exit 1
fi
echo "installed: $(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
