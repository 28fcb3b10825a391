"""``twoshot annotate``: serve the labeling (and, with a checkpoint, propagation) web app."""

from __future__ import annotations

import argparse
import socket
import sys

from twoshot.commands.infer import add_model_arguments, load_model_and_config
from twoshot.errors import UserError

HELP = "label a few frames per video in the browser and propagate them (a local web app)"

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """DATA, --dataset, --split, --budget, --export, --host, --port and the model arguments."""
    parser.add_argument("data", metavar="DATA", help="DAVIS, YouTube-VOS or generic folder, or a video file")
    parser.add_argument(
        "--dataset",
        choices=("davis", "youtube", "generic", "video"),
        default=None,
        help="layout of DATA (default: detected)",
    )
    parser.add_argument("--split", default=None, help="DAVIS or YouTube-VOS split (default: every video)")
    parser.add_argument(
        "--budget",
        metavar="JSON",
        default=None,
        help="label budget to read and update (default: DATA/budget.json, or <video>_budget.json)",
    )
    parser.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="where the Export button writes (default: 'export' beside the budget)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    parser.add_argument(
        "--max-objects",
        type=int,
        default=None,
        help="highest object id a video may use (default 20, at most 255)",
    )
    add_model_arguments(parser)
    # Without a checkpoint the app is a labeling tool: the shared argument is made optional.
    for action in parser._actions:
        if action.dest == "checkpoint":
            action.required = False
            action.help = (
                "weights to propagate with (STCN, Cutie or SAM 2; SAM 2 also segments from clicks); "
                "without: labeling only"
            )


def run(args: argparse.Namespace) -> int:
    """Open the dataset, load the checkpoint (if any), serve until interrupted. Returns 0."""
    import uvicorn

    from twoshot.annotate.jobs import PropagationJobs
    from twoshot.annotate.server import create_app
    from twoshot.annotate.storage import DEFAULT_MAX_OBJECTS, AnnotationStore

    max_objects = DEFAULT_MAX_OBJECTS if args.max_objects is None else args.max_objects
    store = AnnotationStore(args.data, args.dataset, args.split, args.budget, max_objects)
    jobs = None
    if args.checkpoint:
        try:
            model, config = load_model_and_config(args)
        except UserError as exc:
            raise UserError(f"cannot load checkpoint {args.checkpoint}: {exc}") from exc
        except Exception as exc:  # any failure to load stops here, naming the file
            raise UserError(f"cannot load checkpoint {args.checkpoint}: {type(exc).__name__}: {exc}") from exc
        jobs = PropagationJobs(store, model, config)
    if args.host not in LOCAL_HOSTS:
        print(
            f"twoshot annotate: warning: listening on {args.host}; anyone who can reach this "
            "address can read and change the dataset",
            file=sys.stderr,
        )
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(store, jobs, args.export, hosts=[args.host])
    labeled = sum(1 for frames in store.labeled.values() if frames)
    print(
        f"twoshot annotate: {len(store.videos)} videos ({store.layout}), {labeled} with labels, "
        f"budget {store.budget_path}{', propagation on' if jobs else ''}"
    )
    print(f"twoshot annotate: open http://{shown}:{port}/  (Ctrl+C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); UserError if the address is taken or invalid."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise UserError(f"--host {host} --port {port}: cannot listen ({exc})") from exc
    return sock
