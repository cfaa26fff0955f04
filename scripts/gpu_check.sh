#!/usr/bin/env bash
# The GPU check: one command on a CUDA machine, under 8 minutes on one GPU. Runs
#   1. every CUDA-only test (pytest -m cuda; CPU CI skips them),
#   2. a 2-epoch digits run under `torchrun --nproc_per_node=1` (NCCL),
#   3. `python -m birnn.bench --quick` on CUDA (tutorial loop vs birnn, fp32),
#   4. a timed 2-epoch `data=fashion_mnist` run with the tutorial defaults,
# and writes gpu_check.json (each step's exit code, seconds and figures) into OUT (default: gpu_check/).
# Fashion-MNIST: the Debian package's .gz files in FASHION_DIR (default /usr/share/datasets/fashion-mnist).
#   usage: scripts/gpu_check.sh [OUT]        (PYTHON=python3 by default)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${1:-gpu_check}" && cd "${1:-gpu_check}" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
STEPS=()

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to OUT/NAME.log, remember exit code and seconds
    local name=$1 limit=$2; shift 2
    local start=$(date +%s%N)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    STEPS+=("$name $rc $(( ($(date +%s%N) - start) / 1000000 ))")
    echo "$name: exit $rc"
}

FASHION=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p "$OUT/data/FashionMNIST/raw"
for f in "$FASHION"/*-ubyte.gz; do [ -e "$f" ] && gunzip -c "$f" > "$OUT/data/FashionMNIST/raw/$(basename "$f" .gz)"; done

"$PY" - <<'PY' > "$OUT/device.txt" 2>&1
import torch
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
PY
step cuda_tests 180 "$PY" -m pytest tests -m cuda -q -p no:cacheprovider
step torchrun_nccl 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m birnn.train \
    data=digits device=cuda trainer.epochs=2 "hydra.run.dir=$OUT/torchrun_run"
step bench 150 "$PY" -m birnn.bench --quick device=cuda data=fashion_mnist "data.root=$OUT/data" --out "$OUT/bench.json"
step fashion_2_epochs 150 "$PY" -m birnn.train data=fashion_mnist device=cuda "data.root=$OUT/data" \
    "hydra.run.dir=$OUT/fashion_run"

"$PY" - "$OUT" "${STEPS[@]}" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
report = {"device": (out / "device.txt").read_text().strip(), "steps": {}}
for item in sys.argv[2:]:
    name, rc, seconds = item.split()
    report["steps"][name] = {"exit_code": int(rc), "seconds": int(seconds) / 1000}
for name, run in (("torchrun_nccl", "torchrun_run"), ("fashion_2_epochs", "fashion_run")):
    metrics = out / run / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        report["steps"][name].update({k: m.get(k) for k in ("test_accuracy", "train_seconds",
                                                              "train_samples_per_second", "world_size")})
if (out / "bench.json").exists():
    report["steps"]["bench"]["result"] = json.loads((out / "bench.json").read_text())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
sys.exit(max(s["exit_code"] for s in report["steps"].values()))
PY
