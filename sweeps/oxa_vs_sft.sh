#!/usr/bin/env bash
# SFT vs SFT_LP vs OXA_MLE vs OXA_FULL on the toy world (src/reasonft/conf/experiment/toy_*.yaml), three
# training seeds each: one Hydra multirun of 4 x 3 jobs. Stages whose inputs a job shares with an
# earlier one (the world, the base student, its samples and their scores) are reused from the
# content-addressed artifacts. multirun/<date>_<id>/comparison.md (+ .json, .png) compares every
# job, the three seeds of each recipe pooled as mean ± std; each job's own tables are in its
# folder (<n>_<task>_..._seed<seed>/results.md). Extra arguments go to every job, e.g.
#   sweeps/oxa_vs_sft.sh hydra/launcher=slurm hydra.launcher.partition=cpu logger=wandb
#   SEEDS=1 sweeps/oxa_vs_sft.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
METHODS="${METHODS:-toy_sft,toy_sft_lp,toy_oxa_mle,toy_oxa_full}"
SEEDS="${SEEDS:-1,2,3}"

exec "$PYTHON" run.py -m experiment="$METHODS" seed="$SEEDS" "$@"
