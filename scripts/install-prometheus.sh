#!/usr/bin/env bash
# Install the Prometheus server from the system's package manager when it is missing.
# The local Seldon stack starts its own Prometheus on 127.0.0.1; nothing here starts a service.
set -euo pipefail
if command -v prometheus > /dev/null 2>&1; then
  exit 0
fi
echo "Prometheus is not installed; installing it from the system's package manager..."
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo > /dev/null 2>&1; then sudo="sudo"; else
    echo "error: Prometheus is missing and this user cannot install packages." >&2
    echo "Install it (Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus) and re-run." >&2
    exit 1
  fi
fi
if command -v apt-get > /dev/null 2>&1; then
  $sudo apt-get update -q
  # the package's service is not started: policy-rc.d in containers, and we never enable it
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus
elif command -v dnf > /dev/null 2>&1; then
  $sudo dnf install -y golang-github-prometheus
elif command -v brew > /dev/null 2>&1; then
  brew install prometheus
else
  echo "error: no supported package manager found; install Prometheus 2.x and put it on PATH." >&2
  exit 1
fi
command -v prometheus > /dev/null || { echo "error: Prometheus still not on PATH after installing" >&2; exit 1; }
# Debian's package enables a system-wide Prometheus on every interface, port 9090, where systemd runs; the stack
# starts its own on 127.0.0.1, so switch the system service off rather than expose it.
if command -v systemctl > /dev/null 2>&1 && systemctl is-enabled --quiet prometheus 2> /dev/null; then
  $sudo systemctl disable --now prometheus || true
  echo "note: disabled the system prometheus service (it listened on all interfaces)."
fi
