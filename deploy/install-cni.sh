#!/bin/sh
# The agent DaemonSet's init container: installs the CNI plugin and this node's conflist on the
# host (as cilium's install-plugin / config init containers do), then exits.
#
# The plugin is stdlib-only Python (ciliary.cni: main, spec, agentapi, cjson; see main's module
# docstring), so it is shipped as a zipapp the host's python3 (3.11+) runs: no venv on the host.
#
#   K8S_NODE_NAME   the node (downward API spec.nodeName): the plugin's "node", whose agent
#                   socket is /run/ciliary/<node>/agent.sock
#   CNI_BIN_DIR     where the runtime looks for plugins (default /host/opt/cni/bin)
#   CNI_CONF_DIR    the runtime's conf dir (default /host/etc/cni/net.d)
#   CILIARY_PYTHON  the interpreter that builds the zipapp (default python3)
set -eu

: "${K8S_NODE_NAME:?K8S_NODE_NAME (the node name) is required}"
bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/host/etc/cni/net.d}
python=${CILIARY_PYTHON:-python3}

mkdir -p "$bin_dir" "$conf_dir"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# the package's own files, wherever it is installed
pkg=$("$python" -c 'import ciliary, os; print(os.path.dirname(ciliary.__file__))')
mkdir -p "$stage/app/ciliary/cni"
cp "$pkg/__init__.py" "$stage/app/ciliary/"
for f in __init__.py main.py spec.py agentapi.py cjson.py; do cp "$pkg/cni/$f" "$stage/app/ciliary/cni/"; done
printf 'import sys\n\nfrom ciliary.cni.main import main\n\nsys.exit(main())\n' > "$stage/app/__main__.py"
"$python" -m zipapp "$stage/app" -p '/usr/bin/env python3' -o "$stage/ciliary-cni"
chmod 0755 "$stage/ciliary-cni"
# rename into place: a runtime exec'ing the plugin meanwhile sees the old or the new file whole
cp "$stage/ciliary-cni" "$bin_dir/.ciliary-cni.new"
mv -f "$bin_dir/.ciliary-cni.new" "$bin_dir/ciliary-cni"

cat > "$stage/05-ciliary.conflist" <<CONF
{
  "cniVersion": "1.1.0",
  "cniVersions": ["1.0.0", "1.1.0"],
  "name": "ciliary",
  "plugins": [{"type": "ciliary-cni", "node": "$K8S_NODE_NAME", "capabilities": {"ips": true}}]
}
CONF
cp "$stage/05-ciliary.conflist" "$conf_dir/.05-ciliary.conflist.new"
mv -f "$conf_dir/.05-ciliary.conflist.new" "$conf_dir/05-ciliary.conflist"
echo "install-cni: $bin_dir/ciliary-cni and $conf_dir/05-ciliary.conflist for node $K8S_NODE_NAME"
