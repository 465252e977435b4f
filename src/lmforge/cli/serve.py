"""`lmforge serve`: a trained run behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from lmforge.errors import LmforgeError

HELP = "serve a run over HTTP with OpenAI's API (completions, chat, models)"
OVERRIDES = False
DESCRIPTION = (
    "Serve a language model run at http://HOST:PORT/v1 with OpenAI's completions, chat "
    "completions and models endpoints (streaming too), /health, /metrics (Prometheus) and a "
    "page at / to try the model in a browser (no API key needed for the page itself). "
    "The model's name is the run directory's name. Many requests share the model through "
    "continuous batching. SIGTERM stops taking requests (503), finishes those in flight and "
    "exits 0.")
API_KEY_ENV = "LMFORGE_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run directory (a language model: not a classify or "
                                          "tag run)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 "
                        "for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free one)")
    p.add_argument("--api-key", default=None,
                   help=f"require `Authorization: Bearer KEY` on every request (default: "
                        f"${API_KEY_ENV} when set, else no key)")
    p.add_argument("--max-concurrency", type=int, default=16,
                   help="sequences generated at once (default: 16)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="sequences waiting for a slot; past that, 429 (default: 64)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096,
                   help="longest prompt accepted, in tokens (default: 4096)")
    p.add_argument("--max-tokens", type=int, default=1024,
                   help="most new tokens a request may ask for (default: 1024; never more "
                        "than the model's context)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="largest request body; past that, 413 (default: 1 MiB)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a request may take, queueing included (default: 300)")
    p.add_argument("--checkpoint", default="latest",
                   help="latest (default), best or a step_NNNNNNNN name")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, … (default: auto)")


def check_arguments(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise LmforgeError(f"--port must be between 0 and 65535, got {args.port}")
    for flag, value in (("--max-concurrency", args.max_concurrency),
                        ("--max-prompt-tokens", args.max_prompt_tokens),
                        ("--max-tokens", args.max_tokens),
                        ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise LmforgeError(f"{flag} must be at least 1, got {value}")
    if args.max_queue < 0:
        raise LmforgeError(f"--max-queue must be at least 0, got {args.max_queue}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise LmforgeError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.api_key is not None and not args.api_key.strip():
        raise LmforgeError("--api-key is empty")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from lmforge.distributed.device import resolve_device
    from lmforge.runs.card_facts import eval_facts
    from lmforge.runs.load import load_run
    from lmforge.serve.api import create_app
    from lmforge.serve.engine import Engine
    from lmforge.serve.guard import Gate
    from lmforge.serve.limits import Limits
    from lmforge.serve.page import PageFacts
    from lmforge.serve.server import bind, serve

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    device = resolve_device(args.device)
    loaded = load_run(args.run, which=args.checkpoint, device=str(device))
    name = args.run.resolve().name
    sock = bind(args.host, args.port)  # before the engine starts: a port in use fails here
    try:
        engine = Engine(loaded.model, eot_id=loaded.tokenizer.eot_id,
                        max_batch=args.max_concurrency, max_queue=args.max_queue,
                        device=str(device))
    except (TypeError, ValueError) as err:
        sock.close()
        raise LmforgeError(f"{args.run} cannot be served: {err}") from None
    limits = Limits(max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                    max_body_bytes=args.max_body_bytes, request_timeout=args.timeout)
    gate = Gate()
    # parameters() yields a tied weight once: the model's size as it sits in memory
    page = PageFacts(name, parameters=sum(p.numel() for p in loaded.model.parameters()),
                     step=loaded.step, val_loss=eval_facts(loaded).val_loss)
    app = create_app(engine, loaded.tokenizer, name, limits=limits, api_key=api_key, gate=gate,
                     page=page)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {args.run} (step {loaded.step}) as model {name!r} on http://{shown}:{port}/v1"
          f"{' (API key required)' if api_key else ''}; SIGTERM or Ctrl-C to stop", flush=True)
    engine.start()
    code = serve(app, engine, sock, gate=gate, grace=args.timeout)
    print(f"stopped serving {name!r}", file=sys.stderr, flush=True)
    return code
