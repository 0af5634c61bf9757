"""Serve the LLaRA-Studio demo.

    python app.py                         # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080
"""
from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1",
                        help="address to bind (default: 127.0.0.1; 0.0.0.0 only when asked or on Hugging Face Spaces)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)), help="port (default: %(default)s)")
    args = parser.parse_args(argv)
    from app import build_demo
    from app.state import Studio

    print("loading the catalog and recommenders ...", flush=True)
    demo = build_demo(Studio.load())
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
