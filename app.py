"""Serve the LLaRA-Studio demo.

    python app.py                                   # http://127.0.0.1:7860, 4-bit model
    python app.py --precision bf16 --port 8080      # faster on most CPUs, twice the weight memory
    python app.py --host 0.0.0.0                    # reachable from other machines (the default on Spaces)
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from llara.constants import PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    from app.state import DEFAULT_CHECKPOINT, DEFAULT_TEXT_CHECKPOINT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1",
                        help="address to bind (default: 127.0.0.1; 0.0.0.0 only when asked or on Hugging Face Spaces)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)), help="port (default: %(default)s)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="LLaRA checkpoint folder (default: the committed MovieLens model)")
    parser.add_argument("--text-checkpoint", default=None,
                        help="text-only checkpoint for the text-only panel (default: with the default --checkpoint, the "
                             f"committed text-only model {DEFAULT_TEXT_CHECKPOINT.name}; with another checkpoint, none; "
                             "'none': the main model answers its text-only prompt too)")
    parser.add_argument("--precision", choices=PRECISIONS, default="nf4",
                        help="weights of the base model: nf4 (4-bit, default), bf16 or fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="requests handled at once; model calls still run one at a time (default: %(default)s)")
    parser.add_argument("--queue-size", type=int, default=64, help="requests allowed to wait (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, ok, rule in (("--port", args.port, 0 <= args.port <= 65535, "in 0..65535"),
                                  ("--threads", args.threads, args.threads >= 0, ">= 0"),
                                  ("--concurrency", args.concurrency, args.concurrency >= 1, ">= 1"),
                                  ("--queue-size", args.queue_size, args.queue_size >= 1, ">= 1")):
        if not ok:
            parser.error(f"{flag} must be {rule}, got {value}")
    from app import build_demo
    from app.state import DEFAULT_CHECKPOINT, DEFAULT_TEXT_CHECKPOINT, Studio
    from llara.checkpoint import CheckpointError

    from llara.llm import cache_root

    # gradio copies served files (the results plot) into a temp folder: keep it inside our cache folder
    os.environ.setdefault("GRADIO_TEMP_DIR", str(cache_root() / "gradio"))
    try:
        text = args.text_checkpoint
        if text is None and Path(args.checkpoint).resolve() == DEFAULT_CHECKPOINT.resolve():
            text = str(DEFAULT_TEXT_CHECKPOINT)  # the default pair: the hybrid model and its text-only twin
        elif text is not None and text.lower() == "none":
            text = None
        studio = Studio.load(args.checkpoint, precision=args.precision, threads=args.threads, text_checkpoint=text)
    except (FileNotFoundError, ValueError, CheckpointError) as err:  # refuse to start, and say why
        raise SystemExit(f"llara-studio: cannot start: {err}") from None
    demo = build_demo(studio)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size="1mb")


if __name__ == "__main__":
    main()
