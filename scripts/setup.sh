#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs vptsearch with the exact pinned set from constraints.txt.
#   bash scripts/setup.sh            # runtime + dev tools (tests, lint): what scripts/test.sh and CI use
#   bash scripts/setup.sh --runtime  # runtime only: what scripts/quickstart.sh needs
# Idempotent: a second run only checks that the pinned set is satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
  "") target='.[dev]' ;;
  --runtime) target='.' ;;
  *) echo "setup: unknown option '$1' (accepted: --runtime, or nothing for runtime + dev tools)" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# pip's own notices go to a log, shown only when the install fails. --no-compile + compileall -j 0:
# pip byte-compiles the ~6 GB environment on one core (~60 s of a 2-core machine's setup);
# compileall does the same on every core, and skips files already compiled on a rerun.
log=.venv/setup.log
if ! { .venv/bin/python -m pip install -q --upgrade pip \
       && .venv/bin/python -m pip install -q --no-compile -c constraints.txt -e "$target"; } >"$log" 2>&1; then
  cat "$log" >&2
  if grep -q 'No space left on device' "$log"; then
    # The pinned CUDA build of torch makes the environment ~6.6 GB; say where the space ran out.
    echo "setup: out of disk space: free in $(pwd)/.venv: $(df -h --output=avail .venv | tail -1 | tr -d ' '), in ${TMPDIR:-/tmp}: $(df -h --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -d ' ') (the pinned environment needs ~6.6 GB; pip's temporary files go to TMPDIR)" >&2
  fi
  echo "setup: pip install failed (full log above, also in $log)" >&2
  exit 1
fi
# A few third-party files do not compile (Python 2 leftovers, templates); pip ignores those too.
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
  >>"$log" 2>&1 || true
# Optional offline data: Debian's Fashion-MNIST joins the mini suite when present (the tests use it;
# the quickstart's three tasks do not, so --runtime skips the apt round trip).
if [ "$target" != . ] && [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "notice: could not install Debian's dataset-fashion-mnist; the mini suite will skip fashion_mnist"
fi
