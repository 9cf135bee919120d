#!/usr/bin/env bash
# A Hub model on one GPU, with the safespace tasks beside a standard benchmark.
# Needs network access to the Hub (model and data) or a local mirror (SAFESPACE_DATA_DIR).
set -euo pipefail
MODEL=${1:-meta-llama/Llama-3.2-1B-Instruct}
OUT=${2:-out}

safespace-eval --model hf \
  --model_args "pretrained=${MODEL},dtype=bfloat16" \
  --device cuda:0 --batch_size auto \
  --tasks 'safespace_*,hellaswag' \
  --output_path "${OUT}" --log_samples

# The same with the stock CLI:
#   lm_eval --model hf --model_args "pretrained=${MODEL},dtype=bfloat16" --device cuda:0 --batch_size auto \
#     --include_path "$(safespace include-path)" --tasks 'safespace_*,hellaswag' --output_path "${OUT}"
# A base/aligned pair: run both, then compare them (see the README's report section).
