#!/usr/bin/env bash
# The whole nmrl pipeline on a CPU, from a fresh clone: train a small RNM-TD3 2:4 agent, export it to
# verified N:M ONNX, inspect it, run the ONNX policy closed-loop with ONNX Runtime, and time the
# sparse actor against its dense twin. About 5-8 minutes on 2 cores (most of it installing and training).
#
#   scripts/demo.sh                  # or: make demo
#   DEMO_STEPS=30000 scripts/demo.sh # train longer (the default run is short: it shows the pipeline,
#                                    # not a finished Hopper policy)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
ENV_ID=${DEMO_ENV:-Hopper-v5}
STEPS=${DEMO_STEPS:-8000}
STARTS=${DEMO_LEARNING_STARTS:-2000}
RUN_NAME=demo-$(date +%Y%m%d-%H%M%S)
RUN=runs/$RUN_NAME
# One torch thread: on a shared or busy machine, two threads per process can make each update far slower.
THREADS=${DEMO_THREADS:-1}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
nmrl() { "$PY" -m nmrl "$@"; }

if [ ! -x "$PY" ]; then
    step "0/6  setting up .venv (CPU-only PyTorch, Gymnasium MuJoCo, ONNX, ONNX Runtime)"
    make install
fi
export MUJOCO_GL=${MUJOCO_GL:-disable}
start=$(date +%s)

step "1/6  train: RNM-TD3 with every layer of all six networks 2:4 sparse, $STEPS steps of $ENV_ID"
nmrl train --env "$ENV_ID" --sparsity 2:4 --total-steps "$STEPS" --learning-starts "$STARTS" \
    --eval-every 4000 --eval-episodes 5 --checkpoint-every "$STEPS" --threads "$THREADS" \
    --runs-dir runs --run-name "$RUN_NAME"

step "2/6  export: effective weights (exact zeros) -> $RUN/actor.onnx, verified 2:4 along K, on-policy parity and closed-loop returns vs torch"
nmrl export "$RUN"
nmrl export "$RUN" --dtype fp16      # actor.fp16.onnx: the input a strongly typed TensorRT 11 build needs
# actor.int8.onnx: int8 Q/DQ calibrated on the policy's own episodes, K padded to 12, checked closed loop like
# every precision. Should a policy's int8 file fail that verification, nothing is written and the demo goes on.
nmrl export "$RUN" --dtype int8 --pad-k || echo "(int8 export refused by its verification: nothing written)"
nmrl export "$RUN" --format nm-packed # actor.nm.npz: values + 2-bit in-group indices, as sparse tensor cores store them

step "3/6  inspect: what a deployment tool sees in the fp16 file (reads ONNX only, no PyTorch)"
nmrl inspect "$RUN/actor.fp16.onnx"

step "4/6  deploy eval: the ONNX files (fp32, then int8) drive $ENV_ID closed-loop under ONNX Runtime (CPU, 1 thread)"
nmrl deploy eval "$RUN/actor.onnx" --episodes 5 --seed 100
if [ -f "$RUN/actor.int8.onnx" ]; then  # the int8 file (integer QGemm kernels) on the same seeds
    nmrl deploy eval "$RUN/actor.int8.onnx" --episodes 5 --seed 100
fi

step "5/6  the same seeds with the PyTorch checkpoint: returns agree within noise (export compared the actions along torch's own trajectories)"
nmrl deploy eval "$RUN" --backend torch --episodes 5 --seed 100

step "6/6  bench: latency of the 2:4 actor vs its dense twin, PyTorch vs ONNX Runtime, plus a 1024-wide actor"
nmrl bench "$RUN" --backends torch,ort --batch 1,256 --widths 1024 --threads 1

printf '\ndone in %ss. Everything is in %s: config, checkpoints, TensorBoard events, actor.onnx,\n' \
    "$(( $(date +%s) - start ))" "$RUN"
printf 'actor.fp16.onnx, actor.int8.onnx (if its verification passed), actor.nm.npz, bench/bench.csv and bench/bench.png.\n'
