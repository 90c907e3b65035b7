"""Real servers for the object-storage tests, started on 127.0.0.1 and always stopped.

* :func:`moto_server`: moto's S3-compatible server, a process of its own
  (``python -m moto.server``);
* :class:`FaultProxy`: a TCP proxy in front of a server, in a thread of the test process,
  that can answer ``503 SlowDown`` to the next N requests, cut the connection after N
  bytes of a response (a truncated body / a server that dies mid-read), or delay each
  direction (latency).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

KEY = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    """A running S3-compatible server: its endpoint and a boto3 client for setup."""

    endpoint: str
    proc: subprocess.Popen[bytes]

    def client(self) -> Any:
        """A boto3 S3 client for the server (bucket creation, checks)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY["access_key_id"],
            aws_secret_access_key=KEY["secret_access_key"],
            region_name=KEY["region"],
        )

    def options(self, endpoint: str | None = None) -> dict[str, Any]:
        """``storage_options`` for lsio_ray / obstore reaching this server."""
        return {**KEY, "endpoint": endpoint or self.endpoint}

    def environ(self, **more: str) -> dict[str, str]:
        """This process's environment with the ``AWS_*`` variables replaced by the ones
        reaching this server (as the cloud SDKs and obstore read them), plus ``more``:
        for a CLI run as a subprocess."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID=KEY["access_key_id"],
            AWS_SECRET_ACCESS_KEY=KEY["secret_access_key"],
            AWS_REGION=KEY["region"],
            **more,
        )
        return env

    def upload_tree(self, local: str, bucket: str, prefix: str) -> str:
        """Every file under the directory ``local`` as the object ``prefix/<relative
        path>`` of ``bucket``; returns ``s3://bucket/prefix``."""
        cl = self.client()
        for d, _, names in os.walk(local):
            for n in names:
                full = os.path.join(d, n)
                rel = os.path.relpath(full, local).replace(os.sep, "/")
                cl.upload_file(full, bucket, f"{prefix}/{rel}")
        return f"s3://{bucket}/{prefix}"


@contextlib.contextmanager
def s3_bucket(bucket: str, *, configure: bool = False, **server: Any) -> Iterator[S3Server]:
    """:func:`moto_server` (``server``: its arguments) holding an empty ``bucket``; with
    ``configure``, lsio_ray's store options for ``s3://bucket`` point at it.  On exit the
    server stops and this process forgets every store option and store made."""
    from lsio_ray.io import stores

    try:
        with moto_server(**server) as srv:
            srv.client().create_bucket(Bucket=bucket)
            if configure:
                stores.configure(f"s3://{bucket}", **srv.options())
            yield srv
    finally:
        stores._options.clear()
        stores._stores.clear()


@contextlib.contextmanager
def moto_server(
    env: dict[str, str] | None = None, request_log: str | None = None
) -> Iterator[S3Server]:
    """moto's S3 server on a free port of 127.0.0.1, stopped (and reaped) on exit.
    ``env``: more environment for the server (``INITIAL_NO_AUTH_ACTION_COUNT``: requests
    served before IAM authentication is enforced); ``request_log``: a file getting the
    server's log, one line per request (``"GET /bucket/key HTTP/1.1" 403 -``)."""
    port = free_port()
    env = {**os.environ, **(env or {}), "MOTO_PORT": str(port)}
    log = open(request_log, "ab") if request_log else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint}") from None
                time.sleep(0.1)
        yield S3Server(endpoint, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not None:
            log.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` (host, port) that injects faults.

    ``throttle(n)``: the next ``n`` connections' first request gets ``503 SlowDown``
    (S3's throttling answer) instead of being forwarded.  ``cut_after(n)``: responses are
    cut (the connection closed) after ``n`` bytes.  ``rtt_s``: a round trip added to each
    request (half before it is forwarded, half before the first byte of its answer; the
    rest of a response streams at once, as over a real link with that latency).
    ``requests`` counts connections' first requests; ``open_max``, the most connections
    served at once."""

    def __init__(self, target: tuple[str, int], rtt_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = rtt_s / 2
        self._throttle = 0
        self._cut: int | None = None
        self.requests = 0
        self.throttled = 0
        self.open_now = 0
        self.open_max = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = int(self._sock.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    def throttle(self, n: int) -> None:
        """Answer 503 SlowDown to the next ``n`` requests."""
        with self._lock:
            self._throttle = n

    def cut_after(self, n: int | None) -> None:
        """Close each response's connection after ``n`` bytes (None: never)."""
        with self._lock:
            self._cut = n

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with self._lock:
            self.open_now += 1
            self.open_max = max(self.open_max, self.open_now)
        try:
            first = c.recv(65536)
            if not first:
                c.close()
                return
            with self._lock:
                self.requests += 1
                throttle = self._throttle > 0
                if throttle:
                    self._throttle -= 1
                    self.throttled += 1
                cut = self._cut
            if throttle:
                body = (
                    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                    b"<Message>Please reduce your request rate.</Message></Error>"
                )
                c.sendall(
                    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                c.close()
                return
            u = socket.create_connection(self.target)
            with self._lock:
                self._conns.append(u)
            asked = threading.Event()  # a request went up since the last answer byte
            if self.delay_s:
                time.sleep(self.delay_s)
            u.sendall(first)
            asked.set()
            t = threading.Thread(target=self._pipe, args=(c, u, None, asked, True), daemon=True)
            t.start()
            self._pipe(u, c, cut, asked, False)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open_now -= 1
            for s in (c,):
                with contextlib.suppress(OSError):
                    s.close()

    def _pipe(
        self,
        src: socket.socket,
        dst: socket.socket,
        cut: int | None,
        asked: threading.Event,
        upstream: bool,
    ) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                if self.delay_s and (upstream or asked.is_set()):
                    time.sleep(self.delay_s)  # the request's way up, or its answer's way down
                if upstream:
                    asked.set()
                else:
                    asked.clear()
                if cut is not None and sent + len(data) > cut:
                    dst.sendall(data[: max(0, cut - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def nginx_server(
    root: str,
    access_log: str | None = None,
    locations: str = "",
    log_format: str = "$status $body_bytes_sent",
) -> Iterator[str]:
    """nginx (from Debian, ``scripts/setup`` installs it) serving the directory ``root``
    read-only on a free port of 127.0.0.1, with byte ranges; yields its base URL.
    ``access_log``: a file getting one line per request, ``log_format`` (by default
    ``<status> <body bytes>``); ``locations``: more ``location`` blocks (``location
    /secret/ { deny all; }``)."""
    import shutil
    import tempfile

    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise RuntimeError("nginx is not installed (scripts/setup installs nginx-light)")
    port = free_port()
    work = tempfile.mkdtemp(prefix="lsio-nginx-")
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format counts '{log_format}';
    {f"access_log {access_log} counts;" if access_log else "access_log off;"}
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    types {{ }}
    default_type application/octet-stream;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ autoindex off; }}
        {locations}
    }}
}}
"""
        )
    argv = [exe, "-c", conf, "-p", work, "-e", os.path.join(work, "error.log")]
    try:
        with _listening(argv, port, "nginx") as base:
            yield base
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _listening(argv: list[str], port: int, name: str) -> Iterator[str]:
    """Start ``argv``, wait until it accepts connections on 127.0.0.1:``port`` (30 s at
    most, or until it exits), yield ``http://127.0.0.1:port``; stop it at the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start on {base}") from None
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def static_http_server(root: str) -> Iterator[str]:
    """Python's ``http.server`` in a process of its own serving ``root`` on a free port of
    127.0.0.1: a real HTTP server that ignores ``Range`` (every GET answers 200 with the
    whole file); yields its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with _listening([*argv, "--directory", root], port, "http.server") as base:
        yield base
