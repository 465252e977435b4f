"""Memory of loading a pretrained model: a 0.5B-parameter Qwen2.5-shaped model (24 layers,
width 896, 14 heads over 2 key/value heads, vocabulary 151,936, tied embeddings; random
weights, since only the shapes matter here) saved in bf16 as a Hugging Face directory, in
one file and in 200 MB shards, then loaded by lmforge in a fresh process each way:

    stream-bf16   load_pretrained(dtype=bf16): meta device, then one tensor at a time
    stream-fp32   the same into an fp32 model (what full fine-tuning trains)
    dict-fp32     the plain way: every tensor into a dict, a model built and initialized,
                  then load_state_dict (import_hf + build_model)

Each reports its peak resident memory above the process's memory before loading, against
the bytes of the model it builds.

    python benchmarks/load_pretrained.py [--dir /tmp/lmforge-0.5b] [--keep]

Ends with: RESULT stream_bf16_peak_ratio=… stream_fp32_peak_ratio=… dict_fp32_peak_ratio=…
sharded_bf16_peak_ratio=… load_s=…
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = dict(n_layer=24, n_embd=896, n_head=14, n_kv_head=2, mlp_hidden=4864, vocab_size=151936,
             block_size=2048, norm="rmsnorm", mlp="swiglu", pos="rope", qkv_bias=True,
             norm_eps=1e-6, rope_theta=1e6, tie_embeddings=True)


def make_model_dirs(one: Path, sharded: Path) -> int:
    """Write the random bf16 model as one file (lmforge's export) and as ~200 MB shards with
    an index (as save_pretrained(max_shard_size="200MB") would); returns its parameter count."""
    import torch
    from safetensors.torch import load_file, save_file

    from lmforge.config import ModelConfig
    from lmforge.interop.hf_export import export_hf
    from lmforge.models import build_model

    cfg = ModelConfig(**SHAPE)
    with torch.device("meta"):
        model = build_model(cfg)
    model.to_empty(device="cpu")
    model = model.to(torch.bfloat16)
    model.tie_weights()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    n = sum(p.numel() for p in model.parameters())
    export_hf(model, cfg, None, one)
    del model
    weights = load_file(str(one / "model.safetensors"))
    sharded.mkdir(parents=True, exist_ok=True)
    parts, current, size = [], {}, 0
    for name, t in weights.items():
        current[name] = t
        size += t.numel() * t.element_size()
        if size > 200e6:
            parts.append(current)
            current, size = {}, 0
    parts.append(current)
    index = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file(part, str(sharded / fname), metadata={"format": "pt"})
        index.update({name: fname for name in part})
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": index}))
    shutil.copy(one / "config.json", sharded / "config.json")
    return n


def measure(directory: str, how: str) -> None:
    """In a child process: load `directory` as `how`, print one JSON line of figures."""
    import torch

    from lmforge.interop.hf_import import import_hf, load_pretrained
    from lmforge.models import build_model

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        return 0

    before = status("VmRSS")
    start = time.perf_counter()
    if how == "dict-fp32":
        cfg, sd = import_hf(Path(directory))
        model = build_model(cfg)
        model.load_state_dict(sd)
        del sd
    else:
        dtype = torch.bfloat16 if how.endswith("bf16") else torch.float32
        cfg, model = load_pretrained(Path(directory), dtype=dtype)
    seconds = time.perf_counter() - start
    # VmHWM, this process image's own high-water mark: getrusage's ru_maxrss survives exec,
    # so it would report the parent's peak (which wrote the model) as this child's
    peak = status("VmHWM")
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"how": how, "peak_above_start": peak - before, "model_bytes": model_bytes,
                      "seconds": seconds}))


def child(directory: Path, how: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", how, "--dir", str(directory)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated model")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(str(args.dir), args.child)
        return
    root = args.dir or Path(tempfile.mkdtemp(prefix="lmforge-0.5b-"))
    one, sharded = root / "one-file", root / "sharded"
    try:
        if not (sharded / "config.json").is_file():
            n = make_model_dirs(one, sharded)
            print(f"wrote a {n / 1e6:.0f}M-parameter bf16 model to {one} and {sharded}",
                  flush=True)
        ratios, seconds = {}, 0.0
        runs = [("stream-bf16", one), ("stream-fp32", one), ("dict-fp32", one),
                ("sharded-bf16", sharded)]
        for how, directory in runs:
            fig = child(directory, how.replace("sharded", "stream"))
            ratios[how] = fig["peak_above_start"] / fig["model_bytes"]
            seconds = fig["seconds"] if how == "stream-bf16" else seconds
            print(f"{how:13s} peak {fig['peak_above_start'] / 1e9:5.2f} GB above start for a "
                  f"model of {fig['model_bytes'] / 1e9:4.2f} GB: {ratios[how]:.2f}x "
                  f"({fig['seconds']:.1f} s)", flush=True)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}")
    print("RESULT " + " ".join(f"{k.replace('-', '_')}_peak_ratio={v:.2f}" for k, v in ratios.items())
          + f" load_s={seconds:.1f}")


if __name__ == "__main__":
    main()
