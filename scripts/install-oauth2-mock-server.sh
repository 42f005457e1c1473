#!/usr/bin/env bash
# Installs the npm package oauth2-mock-server (an OAuth2 authorization server we did not
# write) into <workspace>/target/test-deps, for crates/auth/tests/interop_oauth2_mock_server.rs.
# Idempotent: does nothing when the pinned major version is already installed.
#
# Major 8 is pinned: it supports Node ^20.19 || ^22.12 || ^24 (9.x needs Node >= 22.12).
set -euo pipefail

MAJOR=8
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/target/test-deps"
PKG="$PREFIX/node_modules/oauth2-mock-server/package.json"

command -v node >/dev/null || { echo "node is not installed (Node ^20.19, ^22.12 or ^24 is needed)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }

if [[ -f "$PKG" ]] && node -e "process.exit(require('$PKG').version.split('.')[0] === '$MAJOR' ? 0 : 1)"; then
    echo "oauth2-mock-server $(node -p "require('$PKG').version") already installed in $PREFIX"
    exit 0
fi

mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-audit --no-fund "oauth2-mock-server@^$MAJOR"
echo "installed oauth2-mock-server $(node -p "require('$PKG').version") in $PREFIX"
