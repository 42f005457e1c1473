#!/usr/bin/env bash
# Installs the npm test peers (oauth2-mock-server, an OAuth2 authorization server we did not
# write) into <workspace>/target/test-deps, for crates/auth/tests/interop_oauth2_mock_server.rs,
# with `npm ci` from the committed lockfile tests/npm/package-lock.json: every version and
# integrity hash is pinned, so CI cannot change under us. Idempotent: does nothing when that
# lockfile is already installed.
#
# oauth2-mock-server 8.x supports Node ^20.19 || ^22.12 || ^24 (9.x needs Node >= 22.12).
# To upgrade: edit tests/npm/package.json, run `npm install --package-lock-only` there, commit both.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/npm"
PREFIX="$ROOT/target/test-deps"
PKG="$PREFIX/node_modules/oauth2-mock-server/package.json"

command -v node >/dev/null || { echo "node is not installed (Node ^20.19, ^22.12 or ^24 is needed)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }

if [[ -f "$PKG" ]] && cmp -s "$SRC/package-lock.json" "$PREFIX/package-lock.json" && cmp -s "$SRC/package.json" "$PREFIX/package.json"; then
    echo "oauth2-mock-server $(node -p "require('$PKG').version") already installed in $PREFIX from the lockfile"
    exit 0
fi

mkdir -p "$PREFIX"
cp "$SRC/package.json" "$SRC/package-lock.json" "$PREFIX/"
(cd "$PREFIX" && npm ci --no-audit --no-fund)
echo "installed oauth2-mock-server $(node -p "require('$PKG').version") in $PREFIX (npm ci)"
