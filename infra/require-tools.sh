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
# chromium: the dashboard's browser tests (tests/integration/test_ui.py) drive the system's
# headless Chromium at this path through Playwright; no browser is ever downloaded.
[ -x /usr/bin/chromium ] || missing+=(chromium)

# Go 1.23+: the tests build infra/composecheck (compose-go, the loader behind `docker compose
# config`). Distribution packages are often older (Debian bookworm: 1.19), so a missing or
# old Go is fetched from the Go module proxy (the official toolchain module, checksummed by
# sum.golang.org) into the Undertow cache; the tests look there (tests/unit/infra).
GO_VERSION=1.23.4
go_ok() { "$1" version 2>/dev/null | grep -Eq 'go1\.(2[3-9]|[3-9][0-9])'; }
if ! { command -v go >/dev/null 2>&1 && go_ok go; }; then
  cache="${UNDERTOW_CACHE_DIR:-$HOME/.cache/undertow}"
  root="$cache/go$GO_VERSION"
  if ! go_ok "$root/bin/go"; then
    case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;; *) arch="" ;; esac
    if [ -z "$arch" ] || ! command -v curl >/dev/null 2>&1; then
      echo "Go $GO_VERSION+ is needed to build infra/composecheck; install it (https://go.dev/dl)" >&2
      exit 1
    fi
    module="golang.org/toolchain/@v/v0.0.1-go$GO_VERSION.linux-$arch.zip"
    echo "fetching Go $GO_VERSION from the Go module proxy into $root" >&2
    tmp="$(mktemp -d)"
    curl -sfL --retry 3 -o "$tmp/go.zip" "${GOPROXY_URL:-https://proxy.golang.org}/$module"
    python3 - "$tmp/go.zip" "$tmp/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
    rm -rf "$root" && mkdir -p "$cache"
    mv "$tmp/x/golang.org/toolchain@v0.0.1-go$GO_VERSION.linux-$arch" "$root"
    rm -rf "$tmp"
    # zip archives drop the executable bits
    chmod +x "$root"/bin/* "$root"/pkg/tool/*/*
    go_ok "$root/bin/go" || { echo "the fetched Go does not run: $root/bin/go" >&2; exit 1; }
  fi
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "missing: ${missing[*]} (the local Kafka broker runs on Java 17+, its jars come through Maven;" >&2
  echo "the dashboard's browser tests run /usr/bin/chromium)." >&2
  echo "Install them with your package manager, e.g. sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
