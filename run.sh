#!/usr/bin/env bash
# The two entry points of this project (see README.md):
#   ./run.sh           the main job: OmniPred warm-started from past studies vs the GP bandit (demo)
#   ./run.sh --opts    the main job with options (`./run.sh --story bbob`, same as `./run.sh main --story bbob`)
#   ./run.sh test      the test suite (what CI runs)
#   ./run.sh <args>    any other `vizier-omnipred` subcommand, e.g. `./run.sh pretrain --help`
# Each call creates .venv on first use (or when setup.cfg/constraints.txt change) and
# installs the pinned dependency set from constraints.txt. Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")"

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || { echo "run.sh: Python 3.11 not found (set PYTHON=...)" >&2; exit 1; }

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "run.sh: setting up .venv (first run only; a few minutes)" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[test,bench]'
  touch "$stamp"
fi

export PYTHONUNBUFFERED=1
case "${1:-main}" in
  main) [ $# -gt 0 ] && shift; exec .venv/bin/vizier-omnipred demo "$@" ;;
  -*) exec .venv/bin/vizier-omnipred demo "$@" ;;  # options of the main job: ./run.sh --story bbob
  test) shift; exec .venv/bin/python -m pytest -q tests "$@" ;;
  *) exec .venv/bin/vizier-omnipred "$@" ;;
esac
