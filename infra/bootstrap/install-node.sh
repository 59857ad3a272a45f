# Installs Node.js from nodejs.org into /opt/node, checked against its SHA-256. Pasted into the user
# data of modules/restore-fleet and modules/cache-tier after they set:
#   node_version  a major line ("22": its latest release) or an exact version ("22.12.0")
#   node_sha256   the linux-x64 tarball's SHA-256, or "" to trust the release's SHASUMS256.txt
case "$node_version" in
  *.*) dist="https://nodejs.org/dist/v$node_version" ;;
  *) dist="https://nodejs.org/dist/latest-v$node_version.x" ;;
esac
work=$(mktemp -d)
curl -fsSL --retry 5 --proto '=https' "$dist/SHASUMS256.txt" -o "$work/SHASUMS256.txt"
tarball=$(awk '$2 ~ /^node-v[0-9.]+-linux-x64\.tar\.xz$/ { print $2 }' "$work/SHASUMS256.txt")
[ -n "$tarball" ] || { echo "no linux-x64 tarball listed at $dist" >&2; exit 1; }
# A pinned checksum wins; otherwise the release's own list, fetched over TLS from the same site.
[ -n "$node_sha256" ] || node_sha256=$(awk -v f="$tarball" '$2 == f { print $1 }' "$work/SHASUMS256.txt")
curl -fsSL --retry 5 --proto '=https' "$dist/$tarball" -o "$work/$tarball"
echo "$node_sha256  $work/$tarball" | sha256sum --check --strict -
rm -rf /opt/node && mkdir -p /opt/node
tar -xJf "$work/$tarball" -C /opt/node --strip-components=1 --no-same-owner
ln -sf /opt/node/bin/node /opt/node/bin/npm /opt/node/bin/npx /usr/local/bin/
rm -rf "$work"
