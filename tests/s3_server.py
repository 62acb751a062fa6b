"""A real S3 API on 127.0.0.1 for the object-storage tests: moto's ThreadedMotoServer (the server s3fs's own
test suite runs against), started by the test on a free port, with a bucket the test creates.

Credentials are dummy values passed the way a user would (the standard AWS environment variables), made
unique per server so that a test can search everything a run wrote for them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Iterator

import pytest

BUCKET = "rayrl-test"


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]  # AWS_* variables that point a client at this server
    secrets: tuple[str, ...]  # strings that must never appear in anything a run writes or prints

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{BUCKET}", *parts])

    def fs(self):
        """A fresh s3fs client (no listing cache) for the test's own looks into the bucket."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                                 endpoint_url=self.endpoint, key=self.env["AWS_ACCESS_KEY_ID"],
                                 secret=self.env["AWS_SECRET_ACCESS_KEY"])

    def leaked(self, text: str | bytes) -> list[str]:
        data = text if isinstance(text, bytes) else text.encode()
        return [s for s in self.secrets if s.encode() in data]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """The server, its bucket, and the AWS environment variables set in this process for the module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    key_id, secret = f"AKIATEST{secrets.token_hex(6).upper()}", f"test-secret-{secrets.token_hex(12)}"
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": key_id,
           "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3 = S3Server(env["AWS_ENDPOINT_URL"], env, (key_id, secret))
    try:
        s3.fs().mkdir(BUCKET)
        yield s3
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # cached clients point at this server
        server.stop()
