#!/usr/bin/env bash
# Installs the npm test peers, OAuth2 authorization servers we did not write, into
# <workspace>/target/test-deps with `npm ci` from the committed lockfile
# tests/npm/package-lock.json: every version and integrity hash is pinned, so CI cannot change
# under us. Idempotent: does nothing when that lockfile is already installed.
#
# - oauth2-mock-server, for crates/auth/tests/interop_oauth2_mock_server.rs;
# - oidc-provider, for crates/auth/tests/interop_oidc_provider.rs (private_key_jwt, RFC 7523).
#
# Node versions: oauth2-mock-server 8.x supports Node ^20.19 || ^22.12 || ^24 (9.x needs
# Node >= 22.12). oidc-provider 9.x declares no `engines` (npm installs it anywhere), but v9.0.0
# dropped Node 18 and 20 ("BREAKING CHANGE: removed support for Node.js 20.x"; upstream tests
# Node >= 22 only) and it prints "oidc-provider WARNING: Unsupported runtime. Use Node.js v22.x
# LTS, or a later LTS release." on older ones. Its interop tests pass on Node 20.19+ despite
# that warning; Node ^22.12 or >= 24 satisfies both packages.
# To upgrade: edit tests/npm/package.json, run `npm install --package-lock-only` there, commit both.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/npm"
PREFIX="$ROOT/target/test-deps"
PACKAGES=(oauth2-mock-server oidc-provider)

command -v node >/dev/null || { echo "node is not installed (Node ^22.12 or >= 24; ^20.19 works with a warning from oidc-provider)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }

# "oauth2-mock-server 8.2.3, oidc-provider 9.13.3", from the installed package.json files.
versions() {
    local out="" p
    for p in "${PACKAGES[@]}"; do
        out+="${out:+, }$p $(node -p "require('$PREFIX/node_modules/$p/package.json').version")"
    done
    echo "$out"
}

installed() {
    local p
    for p in "${PACKAGES[@]}"; do
        [[ -f "$PREFIX/node_modules/$p/package.json" ]] || return 1
    done
    cmp -s "$SRC/package-lock.json" "$PREFIX/package-lock.json" && cmp -s "$SRC/package.json" "$PREFIX/package.json"
}

if installed; then
    echo "$(versions) already installed in $PREFIX from the lockfile"
    exit 0
fi

mkdir -p "$PREFIX"
cp "$SRC/package.json" "$SRC/package-lock.json" "$PREFIX/"
(cd "$PREFIX" && npm ci --no-audit --no-fund)
installed || { echo "npm ci did not install all of: ${PACKAGES[*]}" >&2; exit 1; }
echo "installed $(versions) in $PREFIX (npm ci)"
