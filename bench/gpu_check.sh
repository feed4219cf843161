#!/usr/bin/env bash
# Everything the cupy backend needs checked on a GPU machine, in one bounded run.
#
#   OUT=/some/dir bash bench/gpu_check.sh          # results under $OUT (default ./gpu_check_out)
#
# Steps, each under its own time limit so one hang cannot eat the others:
#   1. the machine: nvidia-smi, CuPy and NVRTC versions, the device's name and limits;
#   2. the GPU tests: pytest -m gpu over tests/rg (per-sample map, Philox words, samplers,
#      first-step statistics, cupy against cpu on the same key);
#   3. throughput of the fused step kernel, float32 and float64, cupy and cpu side by side;
#   4. a large FP (4.8e8 samples x 10 steps) and EXP (1e8 per shift x 10 steps) on cupy,
#      checked against RG_SPEC 3.2 / 3.3 by bench_rg.py.
# It needs only numpy, numba, pytest and CuPy (no pydantic, fabric or tmux): the RG engine and
# its tests import nothing else. The whole run is meant to end inside about 8 minutes; a step
# past its limit is recorded as such and the next one runs.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/opsrg-numba-cache}
summary="$OUT/summary.txt"
: >"$summary"

step() {  # step NAME LIMIT_S CMD...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc
    echo "== $name (limit ${limit}s)" | tee -a "$summary"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$summary"
}

step machine 60 bash -c "nvidia-smi; $PY - <<'EOF'
import cupy, numpy, numba
from cupy.cuda import nvrtc, runtime
p = runtime.getDeviceProperties(0)
print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__)
print('runtime', runtime.runtimeGetVersion(), 'driver', runtime.driverGetVersion(), 'nvrtc', nvrtc.getVersion())
print('device', p['name'].decode(), 'SMs', p['multiProcessorCount'], 'cc', p['major'], p['minor'],
      'smem/block optin', p.get('sharedMemPerBlockOptin'))
EOF"
step pytest_gpu 240 "$PY" -m pytest -q -ra -p no:cacheprovider -m gpu tests/rg
step throughput 150 "$PY" bench/bench_rg.py --backends cupy,cpu --dtypes float32,float64 \
    --json "$OUT/throughput.json"
step large 240 "$PY" bench/bench_rg.py --no-throughput --fp-large --exp --fp-backend cupy \
    --fp-samples 4.8e8 --exp-samples 1e8 --out /tmp/opsrg-gpu-large --json "$OUT/large.json"
echo "== done; results in $OUT" | tee -a "$summary"
