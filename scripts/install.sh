#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: apt toolchain, bpffs, and the Python
# package in .venv. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(clang-19 llvm-19 libbpf-dev iproute2 iptables iperf3 iputils-ping procps prometheus curl wrk etcd-server tcpdump containerd runc docker.io containernetworking-plugins busybox-static podman)

if [ "$(id -u)" != "0" ]; then
  echo "install.sh: run as root (it installs packages and programs the kernel)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  mount -t bpf bpf /sys/fs/bpf
fi

stamp=.venv/.cilia-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing the cilia package and its Python dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
fi
