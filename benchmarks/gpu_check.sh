#!/usr/bin/env bash
# The GPU check in one command, on a bare GPU machine that has torch and transformers but not lm-eval.
# Prepare once where pip works:  python benchmarks/gpu_check.py prepare   (fills .gpu/, ignored by git)
# Then, on the GPU machine, from the checkout root, with .gpu carried:  bash benchmarks/gpu_check.sh
# Writes $OUT/gpu_check.json (or benchmarks/results/gpu_check.json) and the table beside it;
# stops by itself: the script keeps its own budget (400 s, a hard stop at 430 s), and `timeout` ends it at
# 450 s; with the install (about 20 s) the whole command stays under 8 minutes.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import lm_eval" 2>/dev/null; then
  if ! ls .gpu/whl/*.whl >/dev/null 2>&1; then
    echo "lm_eval is not installed and .gpu/whl holds no wheels: run 'python benchmarks/gpu_check.py prepare' where pip works, and carry .gpu" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# fail in seconds, not minutes, when the carried packages do not fit the image's
"$PY" -c "
import importlib.metadata as m
import torch, transformers, datasets, lm_eval.models.huggingface, safespace_tasks.harness
print('imports ok:', ', '.join(f'{n} {m.version(n)}' for n in ('torch', 'transformers', 'lm_eval', 'datasets', 'pyarrow', 'fsspec', 'huggingface_hub')))
" || { echo "the packages in .gpu/whl do not import with this image's; see the error above" >&2; exit 2; }
# nothing outside the machine can be reached: never wait on the Hub
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -d .gpu/data ] && export SAFESPACE_DATA_DIR="$PWD/.gpu/data"
dest=${OUT:-benchmarks/results}
mkdir -p "$dest"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$dest/gpu_check_nvidia_smi.txt"
timeout -k 10 450 "$PY" benchmarks/gpu_check.py --out "$dest/gpu_check.json" "$@" 2>&1 | tee "$dest/gpu_check.log"
rc=${PIPESTATUS[0]}
[ -f "$dest/gpu_check.json" ] && "$PY" benchmarks/gpu_check.py table "$dest/gpu_check.json" > "$dest/gpu_check_table.md"
exit "$rc"
