#!/usr/bin/env bash
# One-command setup from a bare Debian machine; every step is skipped when already done.
#   - Debian packages (clang/llvm for -target bpf, libbpf, bpftool, iproute2, iperf3, nginx,
#     postgresql, redis-server, ...)
#   - bpffs mounted at /sys/fs/bpf and cgroup2 available
#   - .venv with the package (editable) and dev tools
#   - BPF objects compiled (make -C bpf, incremental)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(clang llvm libbpf-dev libbpf1 bpftool iproute2 iperf3 iputils-ping util-linux
              procps libelf-dev make python3-venv containernetworking-plugins iptables
              sockperf prometheus nginx postgresql postgresql-client redis-server redis-tools
              chromium fonts-liberation)
# (chromium: the Hubble UI's browser tests drive Debian's /usr/bin/chromium through playwright;
# fonts-liberation gives its pages readable text)
# npm installs the Hubble UI's pinned front-end dependencies (below); Debian's npm only when none
# is there (a Node.js distribution that bundles its own npm would conflict with it)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages (${need_apt[*]}) and not root: run as root" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    # Debian's prometheus, nginx, redis-server and postgresql packages would start system-wide
    # servers (:9090, :80, :6379, :5432) on a machine with an init system: we only run them from
    # tests (nginx, Redis and PostgreSQL as lab pods, on their own config), so services are not
    # started on install.
    policy_rc=/usr/sbin/policy-rc.d
    if [[ ! -e $policy_rc ]]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy_rc"; chmod +x "$policy_rc"
        trap 'rm -f "$policy_rc"' EXIT
    fi
    # postgresql-common would also create and start a "main" cluster (:5432): the lab's
    # PostgreSQL pods run initdb into their own emptyDir (examples/databases.yaml).
    createcluster=/etc/postgresql-common/createcluster.conf
    if [[ ! -e $createcluster ]]; then
        mkdir -p "$(dirname "$createcluster")"
        echo "create_main_cluster = false" > "$createcluster"
    elif ! grep -Eq '^\s*create_main_cluster\s*=\s*false' "$createcluster"; then
        sed -i -E '/^\s*#?\s*create_main_cluster\s*=/d' "$createcluster"
        echo "create_main_cluster = false" >> "$createcluster"
    fi
    # (a createcluster.conf written above is the admin's: dpkg keeps it rather than asking)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need_apt[@]}" >/dev/null
fi

if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/fs/bpf; then
    echo "setup: mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
    # remembered, so that `make test` / the last `lab down` can give the machine back as found
    touch /run/ciliary-setup-mounted-bpffs
fi

PY=${PYTHON:-python3}
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f $stamp ]]; then
    echo "setup: creating .venv and installing ciliary"
    [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

make -s -C bpf

# Hubble's gRPC/protobuf modules are generated from our .proto files (src/ciliary/hubble/api)
.venv/bin/python scripts/gen_protos.py

# The Hubble UI's front-end dependencies (cytoscape), pinned by src/ciliary/hubble/ui's
# package-lock.json and served from its node_modules (no CDN at run time); again when the lock
# file changed
ui=src/ciliary/hubble/ui
ui_stamp=$ui/node_modules/.installed-$(sha256sum $ui/package-lock.json | cut -c1-16)
if [[ ! -f $ui_stamp ]]; then
    echo "setup: installing the Hubble UI's npm packages"
    (cd "$ui" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
    touch "$ui_stamp"
fi

# CNI plugins are short-lived processes on the pod start-up path: ship them byte-compiled so an
# exec never recompiles (the environment may set PYTHONDONTWRITEBYTECODE).
.venv/bin/python -m compileall -q src/ciliary > /dev/null
# ... and started without site (-IS): ciliary-cni and ciliary-ipam become launchers that skip
# what pip's console scripts pay on every exec (site, .pth files); see ciliary/cni/launcher.py.
.venv/bin/python -m ciliary.cni.launcher .venv/bin > /dev/null
