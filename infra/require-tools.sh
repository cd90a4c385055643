#!/usr/bin/env bash
# Checks the system tools the local stack needs (Java 17+ for the Kafka broker, Maven to resolve
# its jars) and installs them with apt-get where that is possible (root on Debian or Ubuntu).
set -euo pipefail

missing=()
if ! command -v java >/dev/null 2>&1; then
  missing+=(openjdk-17-jre-headless)
elif ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
  echo "Java 17 or newer is needed for the Kafka broker; found: $(java -version 2>&1 | head -n 1)" >&2
  exit 1
fi
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# curl: the tests query the warehouse with it, as users do.
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "missing: ${missing[*]} (the local Kafka broker runs on Java 17+, its jars come through Maven)." >&2
  echo "Install them with your package manager, e.g. sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
