"""``scrutiny serve DIR``: a small read-only web server over a folder of audits.

The index (``/``) is the :mod:`~scrutiny.audit.compare` leaderboard of every audit under
the folder, each linking to its report; every other path is a file inside the folder. It
answers GET and HEAD only (405 otherwise), never a file outside the folder (no ``..``,
no symbolic link leading out, no hidden path such as ``.audit-state``), bounds the
request line, the headers and the time a client may take, and binds 127.0.0.1 unless
told otherwise. Standard library only (:mod:`http.server`).
"""

from __future__ import annotations

import html
import mimetypes
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from scrutiny.audit.compare import compare, find_audits, render_html
from scrutiny.errors import InputError, ScrutinyError

__all__ = ["MAX_FILE_BYTES", "MAX_PATH", "AuditServer", "make_server"]

#: Longest request path accepted (characters); longer ones get 414.
MAX_PATH = 2048
#: Largest file served (bytes); larger ones get 413.
MAX_FILE_BYTES = 512 * 2**20


class _Handler(BaseHTTPRequestHandler):
    server: AuditServer
    server_version = "scrutiny-serve"
    sys_version = ""
    timeout = 10  # seconds a client may take to send its request
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def _refuse(self, status: HTTPStatus, why: str = "") -> None:
        body = f"{status.value} {status.phrase}{': ' + why if why else ''}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if len(self.path) > MAX_PATH:
            return self._refuse(HTTPStatus.REQUEST_URI_TOO_LONG)
        if int(self.headers.get("Content-Length") or 0) > 0:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "GET and HEAD take no body")
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path in ("/", "/index.html"):
            return self._send(self.server.index().encode(), "text/html; charset=utf-8")
        file = self.server.resolve(path)
        if file is None:
            return self._refuse(HTTPStatus.NOT_FOUND)
        if file.is_dir():
            if (file / "report.html").is_file():
                return self._redirect(path.rstrip("/") + "/report.html")
            return self._refuse(HTTPStatus.NOT_FOUND)
        if file.stat().st_size > MAX_FILE_BYTES:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype == "application/json":
            ctype += "; charset=utf-8"
        self._send(file.read_bytes(), ctype)

    def _redirect(self, to: str) -> None:
        self.send_response(HTTPStatus.FOUND)
        self.send_header("Location", urllib.parse.quote(to))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET  # noqa: N815

    def _not_allowed(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815


class AuditServer(ThreadingHTTPServer):
    """The server :func:`make_server` returns; ``root`` is the folder it serves."""

    daemon_threads = True
    request_queue_size = 16

    def __init__(self, root: Path, address: tuple[str, int], *, verbose: bool = False) -> None:
        self.root = root.resolve()
        self.verbose = verbose
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"

    def resolve(self, url_path: str) -> Path | None:
        """The file or folder ``url_path`` names inside :attr:`root`; None when it would lead
        out of it (``..``, a symbolic link out), names a hidden path, or does not exist."""
        parts = [p for p in url_path.split("/") if p]
        if any(p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None  # "..", ".", hidden files and folders, Windows separators
        file = self.root.joinpath(*parts).resolve()
        if not file.is_relative_to(self.root) or not file.exists():
            return None
        return file

    def index(self) -> str:
        """The leaderboard of every audit under :attr:`root`, linking to their reports."""
        try:
            folders = find_audits(self.root)
            if not folders:
                raise InputError("no audit (result.json) here yet")
            board = compare(folders, root=self.root)
        except ScrutinyError as e:
            return (f"<!doctype html><html lang='en'><meta charset='utf-8'>"
                    f"<link rel='icon' href='data:,'><title>scrutiny serve</title>"
                    f"<h1>scrutiny serve</h1><p>{html.escape(str(self.root))}: "
                    f"{html.escape(str(e))}</p></html>")
        return render_html(board, base=self.root, title=f"scrutiny serve {self.root.name}")


def make_server(root: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                verbose: bool = False) -> AuditServer:
    """A read-only server over the audits under ``root`` (not yet serving: call its
    ``serve_forever``; port 0 picks a free port, see ``server_address``).

    Examples
    --------
    >>> import tempfile, threading, urllib.request
    >>> server = make_server(tempfile.mkdtemp(), port=0)
    >>> server.server_address[0]
    '127.0.0.1'
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()
    >>> "no audit" in urllib.request.urlopen(server.url).read().decode()
    True
    >>> server.shutdown(); server.server_close()
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"serve: {root} is not a folder")
    if not 0 <= port < 65536:
        raise InputError(f"--port must be in 0..65535, got {port}")
    try:
        return AuditServer(root, (host, port), verbose=verbose)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e}") from e
