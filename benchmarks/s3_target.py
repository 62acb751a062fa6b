"""An S3 server to measure checkpoint I/O against: moto's ThreadedMotoServer on 127.0.0.1, a bucket in it,
and the standard AWS environment variables pointing this process and the ones it starts at it.

Only where moto and s3fs are installed (the test extra); elsewhere ``s3_target`` yields None and the
benchmark leaves the S3 figures out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from typing import Iterator

BUCKET = "rayrl-bench"


@contextlib.contextmanager
def s3_target() -> Iterator[str | None]:
    """``s3://<bucket>/io`` on a fresh local server for the duration of the block, or None."""
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "benchmark",
           "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8), "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        yield f"s3://{BUCKET}/io"
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
