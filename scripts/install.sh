#!/usr/bin/env bash
# Set a machine up as an andy-host service, as root:
#   sudo scripts/install.sh --coordinator https://pool.example.org --backend ollama --name my-box
#   sudo ./install.sh --wheel andy_host-0.1.0-py3-none-any.whl --role coordinator
# 1. a virtualenv in the prefix (/opt/andy-host) with andy-host in it: from --wheel FILE,
#    else from the checkout this script sits in, else `andy-host` (--version V) from PyPI;
# 2. for --managed: llama-server built into /var/cache/andy-host (unless --llama-server
#    or one on PATH);
# 3. `andy-host service install ...`: the role's config and unit, the user, enable, start.
# Own options: --wheel FILE, --version V, --prefix DIR (also ANDY_HOST_PREFIX), -h.
# Everything else goes to `andy-host service install` (see its --help). --dry-run prints
# what would be done and changes nothing (no prefix, no pip, no build, no files).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
prefix=${ANDY_HOST_PREFIX:-/opt/andy-host}
wheel="" version="" dry_run=0 root=/ managed=0 own_llama=0
pass=()
usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) wheel=$2; shift 2 ;;
    --wheel=*) wheel=${1#*=}; shift ;;
    --version) version=$2; shift 2 ;;
    --version=*) version=${1#*=}; shift ;;
    --prefix) prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *)
      case "$1" in
        --dry-run) dry_run=1 ;;
        --managed) managed=1 ;;
        --llama-server|--llama-server=*) own_llama=1 ;;
        --root) root=$2; pass+=("$1" "$2"); shift 2; continue ;;
        --root=*) root=${1#*=} ;;
      esac
      pass+=("$1"); shift ;;
  esac
done
say() { echo "[install] $*" >&2; }
# run a command, or only show it under --dry-run
act() { if [ "$dry_run" = 1 ]; then say "would run: $*"; else say "running: $*"; "$@"; fi; }

if [ "$dry_run" = 0 ] && [ "$root" = / ] && [ "$(id -u)" != 0 ]; then
  say "run as root (sudo $0 ...): it creates $prefix, a system user and a systemd unit; --dry-run shows what it would do"
  exit 1
fi
command -v python3 >/dev/null || { say "python3 not found: apt-get install python3 python3-venv"; exit 1; }
if [ -n "$wheel" ]; then
  [ -f "$wheel" ] || { say "no such wheel: $wheel"; exit 1; }
  source=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
elif [ -z "$version" ] && [ -f "$here/pyproject.toml" ] && [ -d "$here/andy_host" ]; then
  source=$here  # this checkout
else
  source="andy-host${version:+==$version}"  # PyPI
fi

[ -x "$prefix/bin/python" ] || act python3 -m venv "$prefix"
act "$prefix/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$source"

cache="${root%/}/var/cache/andy-host"
if [ "$managed" = 1 ] && [ "$own_llama" = 0 ] && ! command -v llama-server >/dev/null; then
  say "building llama-server into $cache (about 10 minutes the first time)"
  if [ "$dry_run" = 1 ]; then
    say "would run: ANDY_HOST_CACHE=$cache $prefix/bin/python -m andy_host.tools.llama_build"
  else
    ANDY_HOST_CACHE=$cache "$prefix/bin/python" -m andy_host.tools.llama_build >/dev/null
  fi
  export ANDY_HOST_CACHE=$cache
fi

# under --dry-run the prefix may not exist yet: any andy-host here can print the plan
cli="$prefix/bin/andy-host"
if [ ! -x "$cli" ]; then
  for other in "$(command -v andy-host || true)" "$here/.venv/bin/andy-host"; do
    if [ -n "$other" ] && [ -x "$other" ]; then cli=$other; break; fi
  done
fi
if [ ! -x "$cli" ]; then
  say "would run: $prefix/bin/andy-host service install --prefix $prefix ${pass[*]}"
  exit 0
fi
[ "$dry_run" = 1 ] && say "would run: $prefix/bin/andy-host service install --prefix $prefix ${pass[*]}"
exec "$cli" service install --prefix "$prefix" "${pass[@]}"
