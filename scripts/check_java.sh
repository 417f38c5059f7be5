#!/usr/bin/env bash
# PySpark needs a Java runtime (17, as AWS Glue 5.1 runs). Install it where we may, else say how.
set -euo pipefail
if command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Java not found: installing openjdk-17-jre-headless with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
PySpark needs Java 17 and none was found on PATH (and JAVA_HOME is unset). Install it, e.g.
  Debian/Ubuntu:  sudo apt-get install openjdk-17-jre-headless
  macOS:          brew install openjdk@17
then run this command again.
MSG
exit 1
