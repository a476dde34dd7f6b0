#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR [--dry-run]: install what the GPU machine lacks from .whl/ (there is
# no network there), then run bench/gpu_check.py. Figures land in OUTDIR/gpu_check.{json,md},
# the install log in OUTDIR/install.log. Build .whl/ beforehand with `make wheels`.
set -u
if [ $# -lt 1 ]; then
  echo "usage: bench/gpu_check.sh OUTDIR [--dry-run]" >&2
  exit 2
fi
OUTDIR=$1
shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/reasonft-site}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/install.log
cd "$ROOT" || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

pip_install() {
  "$PYTHON" -m pip install -q --no-index --no-cache-dir --disable-pip-version-check "$@" >>"$LOG" 2>&1
}
present='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))'
needed=$(grep -v '^#' bench/gpu_wheels.txt | sed 's/==.*//' | tr '\n' ' ')
: >"$LOG"
if "$PYTHON" -c "$present" hydra omegaconf datasets trl; then
  echo "hydra, omegaconf, datasets and trl are installed already: nothing installed" >>"$LOG"
elif ! compgen -G ".whl/*.whl" >/dev/null; then
  echo "hydra/omegaconf/datasets/trl are missing and there is no .whl/ (make wheels)" >>"$LOG"
# Resolved against what is installed (may swap in the carried fsspec); else the wheels as they
# are; else beside the interpreter's packages, where its site-packages cannot be written.
elif pip_install --find-links .whl $needed; then
  echo "installed from .whl/ with dependency resolution" >>"$LOG"
elif pip_install --no-deps .whl/*.whl; then
  echo "installed from .whl/ without dependency resolution" >>"$LOG"
elif pip_install --no-deps --upgrade --target "$SITE" .whl/*.whl; then
  export PYTHONPATH="$PYTHONPATH:$SITE"
  echo "installed from .whl/ into $SITE (on PYTHONPATH)" >>"$LOG"
else
  echo "every install from .whl/ failed; the steps will report what is missing" >>"$LOG"
fi
echo "gpu_check.sh: $(tail -1 "$LOG") (log: $LOG)"
exec "$PYTHON" bench/gpu_check.py "$OUTDIR" "$@"
