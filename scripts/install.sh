#!/usr/bin/env bash
# Set a fresh GPU box up end to end, as root:
#   sudo scripts/install.sh --coordinator https://pool.example.org --backend ollama --name my-box
# 1. a virtualenv under /opt/andy-host with andy-host in it (from this checkout),
# 2. for --backend llamacpp --managed: llama-server built into /var/cache/andy-host,
# 3. `andy-host service install "$@"`: config, unit, user, enable and start.
# Extra arguments go to `andy-host service install` (see its --help); --dry-run there
# prints what it would write and run.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix=${ANDY_HOST_PREFIX:-/opt/andy-host}
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo $0 $*): it creates $prefix, a system user and a systemd unit" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "install.sh: python3 not found: apt-get install python3 python3-venv" >&2; exit 1; }
if [ ! -x "$prefix/bin/python" ]; then
  echo "[install] creating $prefix" >&2
  python3 -m venv "$prefix"
fi
echo "[install] installing andy-host into $prefix" >&2
"$prefix/bin/pip" install -q --disable-pip-version-check "$here"
case " $* " in
  *" --managed "*)
    echo "[install] building llama-server into /var/cache/andy-host (about 10 minutes the first time)" >&2
    ANDY_HOST_CACHE=/var/cache/andy-host "$prefix/bin/python" -m andy_host.tools.llama_build >/dev/null
    export ANDY_HOST_CACHE=/var/cache/andy-host ;;
esac
exec "$prefix/bin/andy-host" service install --prefix "$prefix" "$@"
