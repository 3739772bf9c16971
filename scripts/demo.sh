#!/usr/bin/env bash
# The whole nmrl pipeline on a CPU, from a fresh clone: train a small RNM-TD3 2:4 agent that learns its
# task (Reacher-v5: move the arm's tip onto a target), export its best checkpoint to verified N:M ONNX,
# inspect it, run the ONNX policy closed-loop with ONNX Runtime beside a random policy on the same
# seeds, write a video of it when MuJoCo can render here, and time the sparse actor against its dense
# twin. About 4 minutes on 2 cores once .venv exists (docs/deploy.md, "The demo").
#
#   scripts/demo.sh                  # or: make demo
#   DEMO_STEPS=50000 scripts/demo.sh # train longer
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
ENV_ID=${DEMO_ENV:-Reacher-v5}
STEPS=${DEMO_STEPS:-20000}
STARTS=${DEMO_LEARNING_STARTS:-1000}
HIDDEN=${DEMO_HIDDEN:-64 64}   # small networks: twice the env steps per second of 256-256 on a CPU
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
start=$(date +%s)

step "1/7  train: RNM-TD3 with every layer of all six networks 2:4 sparse, $STEPS steps of $ENV_ID"
# shellcheck disable=SC2086  # HIDDEN is a list of widths
nmrl train --env "$ENV_ID" --sparsity 2:4 --total-steps "$STEPS" --learning-starts "$STARTS" --hidden $HIDDEN \
    --eval-every 2000 --eval-episodes 10 --checkpoint-every "$STEPS" --threads "$THREADS" \
    --runs-dir runs --run-name "$RUN_NAME"

step "2/7  export the best checkpoint: effective weights (exact zeros) -> $RUN/actor.onnx, verified 2:4 along K, on-policy parity and closed-loop returns vs torch"
nmrl export "$RUN" --checkpoint best
nmrl export "$RUN" --checkpoint best --dtype fp16      # actor.fp16.onnx: the input a strongly typed TensorRT 11 build needs
# actor.int8.onnx: int8 Q/DQ calibrated on the policy's own episodes, K padded to 12, checked closed loop like
# every precision. Should a policy's int8 file fail that verification, nothing is written and the demo goes on.
nmrl export "$RUN" --checkpoint best --dtype int8 --pad-k || echo "(int8 export refused by its verification: nothing written)"
nmrl export "$RUN" --checkpoint best --format nm-packed # actor.nm.npz: values + 2-bit in-group indices, as sparse tensor cores store them

step "3/7  inspect: what a deployment tool sees in the fp16 file (reads ONNX only, no PyTorch)"
nmrl inspect "$RUN/actor.fp16.onnx"

step "4/7  deploy eval: the ONNX files (fp32, then int8) drive $ENV_ID closed-loop under ONNX Runtime (CPU, 1 thread), beside random actions on the same seeds"
nmrl deploy eval "$RUN/actor.onnx" --episodes 10 --seed 100 --baseline random
if [ -f "$RUN/actor.int8.onnx" ]; then  # the int8 file (integer QGemm kernels) on the same seeds
    nmrl deploy eval "$RUN/actor.int8.onnx" --episodes 10 --seed 100
fi

step "5/7  the same seeds with the PyTorch checkpoint: returns agree within noise (export compared the actions along torch's own trajectories)"
nmrl eval "$RUN" --checkpoint best --episodes 10 --seed 100

step "6/7  video: the deployed file's first episode, drawn offscreen by MuJoCo (when it can render here)"
nmrl deploy eval "$RUN/actor.onnx" --episodes 1 --seed 100 --capture-video \
    || echo "(no video: MuJoCo cannot render on this machine; the line above says what to install)"

step "7/7  bench: latency of the 2:4 actor vs its dense twin, PyTorch vs ONNX Runtime, plus a 1024-wide actor"
nmrl bench "$RUN" --checkpoint best --backends torch,ort --batch 1,256 --widths 1024 --threads 1

printf '\ndone in %ss. Everything is in %s: config, checkpoints, TensorBoard events, actor.onnx,\n' \
    "$(( $(date +%s) - start ))" "$RUN"
printf 'actor.fp16.onnx, actor.int8.onnx (if its verification passed), actor.nm.npz, videos/ (if MuJoCo could render),\nbench/bench.csv and bench/bench.png.\n'
