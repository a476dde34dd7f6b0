#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR [--dry-run]: install what the GPU machine lacks from .whl/ (no
# network there), then run bench/gpu_check.py. Figures land in OUTDIR/gpu_check.{json,md}, the
# install log in OUTDIR/install.log. Build .whl/ beforehand with `make wheels`.
set -u
if [ $# -lt 1 ]; then
  echo "usage: bench/gpu_check.sh OUTDIR [--dry-run]" >&2
  exit 2
fi
OUTDIR=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$OUTDIR"
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

needed=$(grep -v '^#' bench/gpu_wheels.txt | sed 's/==.*//' | tr '\n' ' ')
present='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))'
if "$PYTHON" -c "$present" hydra omegaconf datasets trl; then
  echo "gpu_check: hydra, omegaconf, datasets and trl are installed already; nothing installed" \
    >"$OUTDIR/install.log"
elif compgen -G ".whl/*.whl" >/dev/null; then
  # Resolve against what is installed; where that fails (a version there conflicts), install
  # the wheels as they are and let the steps report what breaks.
  {
    "$PYTHON" -m pip install --no-index --find-links .whl --no-cache-dir $needed ||
      "$PYTHON" -m pip install --no-index --no-deps --no-cache-dir .whl/*.whl
  } >"$OUTDIR/install.log" 2>&1
  echo "gpu_check: pip install from .whl exited with $? (log: $OUTDIR/install.log)"
else
  echo "gpu_check: hydra/omegaconf/datasets/trl missing and no .whl/ here (make wheels)" |
    tee "$OUTDIR/install.log" >&2
fi
exec "$PYTHON" bench/gpu_check.py "$OUTDIR" "$@"
