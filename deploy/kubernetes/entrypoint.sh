#!/bin/sh
# The xmacvlan DaemonSet's entrypoint: install the CNI plugin on the node (as
# /opt/cni/bin/xmacvlan, where kubelet and Multus look for "type": "xmacvlan"), then become
# the daemon. The copy goes to a temporary name and is renamed, so a runtime never executes
# a half-written plugin.
set -eu

CNI_BIN_DIR="${CNI_BIN_DIR:-/host/opt/cni/bin}"
XMACVLAN_CNI="${XMACVLAN_CNI:-/usr/local/bin/xmacvlan-cni}"
XMACVLAN="${XMACVLAN:-/usr/local/bin/xmacvlan}"
XMACVLAN_CONFIG="${XMACVLAN_CONFIG:-/etc/xmacvlan/daemon.json}"

if [ ! -d "$CNI_BIN_DIR" ]; then
    echo "xmacvlan-entrypoint: $CNI_BIN_DIR is not mounted: mount the node's /opt/cni/bin there" >&2
    exit 1
fi
tmp="$CNI_BIN_DIR/.xmacvlan.$$"
cp "$XMACVLAN_CNI" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$CNI_BIN_DIR/xmacvlan"
echo "xmacvlan-entrypoint: installed $CNI_BIN_DIR/xmacvlan" >&2

exec "$XMACVLAN" daemon --config "$XMACVLAN_CONFIG" "$@"
