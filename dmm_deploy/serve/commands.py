"""Command-line entry points: ``dmm-deploy serve``, ``client`` and ``triton-repo``.

Light at import time (argparse only); each ``run_*`` imports what it needs. Bad arguments
raise ``ValueError``/``FileNotFoundError`` with one line naming the argument; a missing module
of the ``serve`` extra is one line naming what to install (checked after the arguments,
before anything is written).
"""

from __future__ import annotations

import argparse

__all__ = [
    "add_client_args",
    "add_serve_args",
    "add_triton_repo_args",
    "run_client",
    "run_serve",
    "run_triton_repo",
]


def _limits(p: argparse.ArgumentParser, streams: int, batch: int, delay: float) -> None:
    g = p.add_argument_group("streams and batching")
    g.add_argument(
        "--max-streams",
        type=int,
        default=streams,
        metavar="N",
        help=f"most live streams; a new stream beyond them is refused (default {streams})",
    )
    g.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds without a frame after which a stream's state is dropped (default 30)",
    )
    g.add_argument(
        "--max-batch",
        type=int,
        default=batch,
        metavar="N",
        help=f"most streams in one batched step (default {batch})",
    )
    g.add_argument(
        "--batch-delay-ms",
        type=float,
        default=delay,
        metavar="MS",
        help=f"how long a step waits for frames of other streams (default {delay:g} ms)",
    )


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """``dmm-deploy serve BUNDLE``: Triton Inference Server with the per-stream model."""
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder (dmm-deploy export-model)")
    p.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="default 8000")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="default 8001")
    p.add_argument("--metrics-port", type=int, default=8002, metavar="PORT", help="default 8002")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        metavar="IP",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--backend", default="onnxruntime", metavar="B", help="onnxruntime (default) or tensorrt"
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads")
    p.add_argument(
        "--repository",
        metavar="DIR",
        help="write the model repository here and keep it (default: a temporary folder)",
    )
    _limits(p, 64, 8, 5.0)


def _port(name: str, v: int) -> int:
    if not 0 < v < 65536:
        raise ValueError(f"--{name}: a TCP port in 1..65535 is expected, got {v}")
    return v


def run_serve(args: argparse.Namespace) -> int:
    import shutil
    import signal
    import tempfile
    from pathlib import Path

    from dmm_deploy.serve.repository import write_serve_repository
    from dmm_deploy.serve.tritonserver import TritonServer, TritonServerError

    if not Path(args.bundle).is_dir():
        raise FileNotFoundError(f"BUNDLE: {args.bundle} is not a folder")
    ports = [
        _port(n, getattr(args, n.replace("-", "_")))
        for n in ("http-port", "grpc-port", "metrics-port")
    ]
    if len(set(ports)) != 3:
        raise ValueError(f"--http-port, --grpc-port, --metrics-port must differ, got {ports}")
    tmp = None
    if args.repository:
        repo = Path(args.repository)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="dmm-serve-"))
        repo = tmp / "repository"
    try:
        try:  # checks every other argument and what the server needs before writing
            write_serve_repository(
                args.bundle,
                repo,
                max_streams=args.max_streams,
                idle_timeout=args.idle_timeout,
                max_batch=args.max_batch,
                queue_delay_ms=args.batch_delay_ms,
                backend=args.backend,
                device=args.device,
                threads=args.threads,
            )
        except ImportError as e:  # the serve extra (or the backend's) is not installed
            raise ValueError(str(e)) from e
        srv = TritonServer(
            repo,
            http_port=ports[0],
            grpc_port=ports[1],
            metrics_port=ports[2],
            address=args.address,
        )

        def _terminate(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, _terminate)
        try:
            try:
                srv.start()
            except TritonServerError as e:  # a port in use, a model that does not load
                raise ValueError(str(e)) from e
            print(
                f"serving {args.bundle}: gRPC {srv.grpc_url}, HTTP {srv.http_url}, "
                f"metrics {srv.metrics_url}; model 'dmm_segment'; Ctrl-C stops",
                flush=True,
            )
            code = srv.wait()
            print(f"tritonserver exited with code {code}: {srv.log_text()[-2000:]}")
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            srv.stop()
            signal.signal(signal.SIGTERM, old)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def add_client_args(p: argparse.ArgumentParser) -> None:
    """``dmm-deploy client``: segment a folder of frames through a server."""
    p.add_argument(
        "--url", required=True, metavar="HOST:PORT", help="server (gRPC port by default)"
    )
    p.add_argument("--protocol", default="grpc", choices=("grpc", "http"), help="default grpc")
    p.add_argument("--frames", required=True, metavar="DIR", help="folder of .jpg/.png frames")
    p.add_argument("--mask", required=True, metavar="PNG", help="first frame's annotation")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder of palette PNGs")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the masks dmm-deploy wrote in a non-empty --out (anything else: refused)",
    )
    p.add_argument(
        "--precomputed",
        metavar="NPZ",
        help="this video's detections (for a server whose bundle has no proposals stage)",
    )
    p.add_argument("--stream-id", metavar="ID", help="stream id (default: a random one)")
    p.add_argument("--model", default="dmm_segment", metavar="NAME", help="default dmm_segment")
    p.add_argument("--max-frames", type=int, metavar="N", help="only the first N frames")


def _server_url(url: str) -> str:
    """``--url`` as tritonclient takes it: ``HOST:PORT``, no scheme (that is ``--protocol``)."""
    if "://" in url:
        raise ValueError(
            f"--url {url}: expected HOST:PORT without a scheme (--protocol grpc or http says "
            "how to talk to the server)"
        )
    host, _, port = url.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--url {url}: expected HOST:PORT, e.g. localhost:8001")
    return url


def run_client(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dmm_deploy.serve.client import ServerError, run_client_job

    if not Path(args.frames).is_dir():
        raise FileNotFoundError(f"--frames: {args.frames} is not a folder")
    if not Path(args.mask).is_file():
        raise FileNotFoundError(f"--mask: file not found: {args.mask}")
    if args.precomputed is not None and not Path(args.precomputed).is_file():
        raise FileNotFoundError(f"--precomputed: file not found: {args.precomputed}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    url = _server_url(args.url)
    try:  # checks --out and the inputs, then the server, before --out is created
        n = run_client_job(
            url,
            args.frames,
            args.mask,
            args.out,
            protocol=args.protocol,
            stream_id=args.stream_id,
            precomputed=args.precomputed,
            model=args.model,
            max_frames=args.max_frames,
            overwrite=args.overwrite,
        )
    except ImportError as e:  # tritonclient (the serve extra) is not installed
        raise ValueError(str(e)) from e
    except ServerError as e:  # the server refused a frame: its message, one line
        raise ValueError(str(e)) from e
    print(f"client: {n} label maps written to {args.out}")
    return 0


def add_triton_repo_args(p: argparse.ArgumentParser) -> None:
    """``dmm-deploy triton-repo BUNDLE OUT``: a model repository for a GPU server."""
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder (dmm-deploy export-model)")
    p.add_argument("out", metavar="OUT", help="model repository folder to write (new or empty)")
    p.add_argument(
        "--platform",
        default="onnxruntime",
        choices=("onnxruntime", "tensorrt_plan", "python"),
        help="how the stateless stages are served (default onnxruntime; python: on the CPU "
        "through the Python backend, e.g. to try the repository without a GPU)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a repository written earlier in OUT (kept until the new one is complete)",
    )
    _limits(p, 256, 16, 2.0)


def run_triton_repo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dmm_deploy.serve.repository import write_triton_repo

    if not Path(args.bundle).is_dir():
        raise FileNotFoundError(f"BUNDLE: {args.bundle} is not a folder")
    try:
        models = write_triton_repo(
            args.bundle,
            args.out,
            platform=args.platform,
            max_streams=args.max_streams,
            idle_timeout=args.idle_timeout,
            max_batch=args.max_batch,
            queue_delay_ms=args.batch_delay_ms,
            overwrite=args.overwrite,
        )
    except ImportError as e:  # tritonclient (the serve extra) is not installed
        raise ValueError(str(e)) from e
    for name, d in models.items():
        print(f"{name}: {d}")
    if args.platform == "tensorrt_plan":
        print(
            "tensorrt_plan: build each stage's <stage>.onnx into <model>/1/model.plan on the "
            "serving GPU before starting the server"
        )
    return 0
