"""`embedgate embed INPUT --model M [--out FILE] ...`: the command line for a corpus."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from proxy.bulk.job import Checkpoint, ResumeMismatch, fingerprint, run_job
from proxy.bulk.progress import Progress
from proxy.bulk.sources import SourceError, read_rows
from proxy.bulk.transport import EmbedFailed, HttpTransport, InProcessTransport, Transport

DEFAULT_URL = "http://127.0.0.1:8080/v1"


def add_embed_command(sub: Any) -> None:
    embed = sub.add_parser("embed", help="embed a corpus (JSONL, CSV, Parquet or text lines) into a file",
                           description="Embed every row of INPUT; run again after an interruption to resume.")
    embed.add_argument("input", type=Path, help=".jsonl, .csv, .parquet, or any other file as text lines")
    embed.add_argument("--model", required=True)
    embed.add_argument("--out", type=Path, help=".parquet (default), .npy (+ .ids.txt) or .jsonl")
    embed.add_argument("--field", default="text", help="the text field of JSONL/CSV/Parquet rows")
    embed.add_argument("--id-field", default="id", help="the id field (default: the row number)")
    embed.add_argument("--dimensions", type=int)
    embed.add_argument("--url", default=os.environ.get("EMBEDGATE_URL", DEFAULT_URL),
                       help="an OpenAI-compatible base URL (default: $EMBEDGATE_URL, else %(default)s)")
    embed.add_argument("--api-key", default=None, help="default: $EMBEDGATE_API_KEY, else $OPENAI_API_KEY")
    embed.add_argument("--batch-size", type=int, default=256, help="rows per request")
    embed.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    embed.add_argument("--local", action="store_true",
                       help="run the model in this process (the bundled one, or --config's) instead of --url")
    embed.add_argument("--config", help="with --local: a gateway config (default: the bundled local model)")
    embed.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    out: Path = args.out or args.input.with_suffix(".parquet")
    try:
        rows = read_rows(args.input, args.field, args.id_field)
        if args.batch_size < 1 or args.concurrency < 1:
            raise SourceError("--batch-size and --concurrency must be at least 1")
        if out.exists():
            raise SourceError(f"{out} exists; remove it to embed again")
        where = "local" if args.local else args.url
        checkpoint = Checkpoint(out, fingerprint(rows, args.model, args.dimensions, args.batch_size, where,
                                                 args.field, args.id_field))
        summary = asyncio.run(_run(args, rows, out, checkpoint))
    except (SourceError, ResumeMismatch, EmbedFailed, OSError) as err:
        print(f"embedgate embed: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}", file=sys.stderr)
    for line in summary.lines():
        print(line, file=sys.stderr)
    return 0


async def _run(args: argparse.Namespace, rows: Any, out: Path, checkpoint: Checkpoint) -> Any:
    transport = _transport(args)
    try:
        return await run_job(rows, out, transport, checkpoint, batch_size=args.batch_size,
                             concurrency=args.concurrency, progress=Progress())
    finally:
        await transport.aclose()


def _transport(args: argparse.Namespace) -> Transport:
    if args.local:
        from proxy.cli import settings_for

        return InProcessTransport(settings_for(args.config), args.model, args.dimensions)
    key = args.api_key or os.environ.get("EMBEDGATE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return HttpTransport(args.url, key, args.model, args.dimensions)
