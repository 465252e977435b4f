#!/usr/bin/env bash
# GPT-2 124M on one GPU through the same trainer as everything else: bf16 autocast,
# torch.compile of each block, fused AdamW, a bounded number of steps. Prints tokens/s and
# MFU against the GPU's dense bf16 peak, and records both in benchmarks/results/.
#
#   bash benchmarks/gpu.sh [STEPS]        (needs a CUDA build of torch and lmforge installed)
#
# Ends with: RESULT tokens_per_s=… mfu=… device=…
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-60}"
out="benchmarks/out/gpu"
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("benchmarks/gpu.sh needs a GPU and a CUDA build of torch")
PY
rm -rf "$out/run"
python -m lmforge train gpt2_124m --run.dir="$out/run" --data.path="$out/data" \
    --train.max_steps="$steps" --train.grad_accum=1 --train.log_every=10 --train.progress=false \
    --optim.warmup_steps=10 --eval.every=0 --eval.batches=2 --eval.samples=0 \
    --checkpoint.every=0 --checkpoint.keep_best=false
python - "$out/run" <<'PY'
import datetime, json, pathlib, sys, torch
run = pathlib.Path(sys.argv[1])
records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
train = [r for r in records if r["kind"] == "train"]
# tokens/s over the second half of the run: compilation and warm-up left out
half = train[len(train) // 2:]
tok_s = (half[-1]["tokens"] - half[0]["tokens"]) / (half[-1]["elapsed_s"] - half[0]["elapsed_s"])
from lmforge.config import from_dict
from lmforge.recipes import read_toml
from lmforge.models import build_model
cfg = from_dict(read_toml(run / "config.toml"), origin="config.toml")
with torch.device("meta"):
    flops = build_model(cfg.model).flops_per_token()
name = torch.cuda.get_device_name()
# dense bf16 peak (no sparsity): H100/H200 SXM 989 TFLOP/s, A100 312
peak = 989e12 if ("H100" in name or "H200" in name) else 312e12 if "A100" in name else float("nan")
mfu = tok_s * flops / peak
line = f"RESULT tokens_per_s={tok_s:.0f} mfu={mfu:.3f} device={name.replace(' ', '_')}"
results = pathlib.Path("benchmarks/results")
results.mkdir(parents=True, exist_ok=True)
stamp = datetime.date.today().isoformat()
(results / f"gpu-{stamp}.txt").write_text(line + "\n")
print(line)
PY
