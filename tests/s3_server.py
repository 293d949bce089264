"""A real S3-compatible server on 127.0.0.1 for the tests: moto's server mode (`moto[server]`,
a separate process speaking the S3 REST API), reached through a TCP relay that a test can
cut and restore to simulate an outage (moto keeps its data in memory, so the server itself
must not be restarted). s3fs finds it through the standard AWS_ENDPOINT_URL variable, which
Ray workers started from the test process inherit.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """127.0.0.1:port -> target, byte for byte, one thread pair per connection. stop() refuses
    new connections and cuts the open ones (the store is 'down'); start() listens again."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class S3Server:
    """moto server + relay; `env` is what a client (or a subprocess) needs to reach it."""

    def __init__(self):
        self.moto_port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(self.moto_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.moto_port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, "moto server did not start"
                time.sleep(0.2)
        self.relay = Relay(self.moto_port)
        self.relay.start()
        self.endpoint = f"http://127.0.0.1:{self.relay.port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def direct_fs(self):
        """An s3fs client on moto itself, bypassing the relay (sees the bucket during an outage)."""
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", skip_instance_cache=True,
                                 endpoint_url=f"http://127.0.0.1:{self.moto_port}")

    def close(self) -> None:
        self.relay.stop()
        self.proc.kill()
        self.proc.wait(timeout=30)


def keys(fs, prefix: str) -> dict[str, str]:
    """{key: ETag} of every object under prefix (what changed, and what exists at all)."""
    fs.invalidate_cache()
    return {path: info.get("ETag", "") for path, info in fs.find(prefix, detail=True).items()}
