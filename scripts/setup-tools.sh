#!/usr/bin/env bash
# Install the non-Python tools grpc-mesh's tests and demo use: nghttp2's client (nghttp), nginx and
# redis-server (the shared buckets of GLOBAL rate limits) from Debian's packages, and buf from npm
# into node_modules/. Quick and silent when all are there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "setup-tools: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for package in nghttp2-client nginx redis-server; do
  installed "$package" || missing+=("$package")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup-tools: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x node_modules/.bin/buf ]; then
  echo "setup-tools: installing buf (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi
