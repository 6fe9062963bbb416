#!/usr/bin/env bash
# On a CUDA machine: the CUDA tests, then every heavy stage's GPU benchmark, results under
# benchmarks/results/ (and copied to $OUT when set, e.g. on a lent device machine).
#   bash scripts/gpu-checks.sh            # tests + benchmarks
#   bash scripts/gpu-checks.sh tests      # CUDA tests only
# Wheels that the machine lacks (hydra-core, omegaconf, antlr4, faiss-cpu, duckdb) may sit in .whl/
# (../shared/scripts/gpu-wheels.sh duckdb==2.0.1; the image has scikit-learn, scipy and jinja2), and the text model's config and tokenizer without its weights
# in .minilm-config/ (python benchmarks/bench_text.py --export-config .minilm-config): carry both.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpuseg-site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/gpuseg-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1

status=0
# the device-parametrised tests (their CPU halves run too, which is cheap)
python3 -m pytest -q -k cuda tests/ || status=1
[ "${1:-all}" = tests ] && exit $status

python3 benchmarks/bench_kmeans.py --device cuda --n 10000000 --d 256 --k 1000 || status=1
python3 benchmarks/bench_lookalike.py --device cuda --n 10000000 --d 256 --queries 10000 || status=1
python3 benchmarks/bench_journey.py --device cuda --n 200000 --max-len 100 --hidden 256 || status=1
python3 benchmarks/bench_assign.py --device cuda --n 10000000 --d 64 --k 100 --e2e-customers 0 || status=1
# the real MiniLM weights may not be on the machine: same-config random weights, recorded as such
model=(); [ -d .minilm-config ] && model=(--model .minilm-config)
python3 benchmarks/bench_text.py --device cuda --random-weights "${model[@]}" || status=1
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*cuda*.json "$OUT"/ 2>/dev/null; fi
exit $status
