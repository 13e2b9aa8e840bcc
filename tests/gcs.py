"""A GCS server on 127.0.0.1 for the gs:// tests: gcp-storage-emulator's in-memory storage and
request handler, served on a free port, reached by gcsfs through STORAGE_EMULATOR_HOST (as a
user points it at any emulator).

The emulator differs from real GCS in two ways the store depends on, so this server adds them
in front of its handler (real GCS needs neither patch):
- it ignores suffix range requests (`Range: bytes=-N`, how a shard's index is read) and sends
  the whole object; here they are rewritten to the equivalent `bytes=SIZE-N-`;
- it ignores `ifGenerationMatch=0` on uploads (exclusive creation: leases, commit markers, the
  job lock) and overwrites; here such an upload of an existing object gets 412, as from GCS;
- it parses multipart uploads with Python's email parser, which takes a content's trailing
  `\r` for part of the line break before the closing boundary (gcsfs ends lines with a bare
  `\n`), so an object whose last byte is 0x0D was stored one byte short (a shard whose crc32c
  ended so failed as truncated, about one run in 100); here the parts are split exactly.
Requests are served one at a time, so that check and the upload after it are one step.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from functools import partial
from http.server import HTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets
from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage

_DOWNLOAD = re.compile(r"^/download/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>.+)$")
_SUFFIX = re.compile(r"^\s*bytes=-(?P<n>[0-9]+)\s*$")
#: The first part of a multipart upload: the object's JSON metadata.
_METADATA = re.compile(rb"\r?\n\r?\n(\{.*?\})\r?\n--", re.DOTALL)


def _read_data(handler: Any, query: dict[str, list[str]]) -> Any:
    """The emulator's request body reader, with multipart uploads split at their boundary
    exactly: a part's content ends where its one line break before the delimiter begins."""
    content_type = handler.headers.get("Content-Type") or ""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not (content_type.startswith("multipart/related") and boundary):
        return _emulator_read_data(handler, query)
    raw = emulator._decode_raw_data(emulator._read_raw_data(handler), handler)
    delimiter = b"--" + boundary[1].encode()
    parts = raw.split(delimiter)[1:-1]  # what lies between the first and the closing one
    meta, content = (_part(p) for p in parts)
    return {"meta": json.loads(meta[1]), "content": content[1], "content-type": content[0]}


def _part(part: bytes) -> tuple[str, bytes]:
    """A part's content type and content: its headers end at the first blank line; its
    content at the line break that precedes the next delimiter (\\r\\n or a bare \\n)."""
    eol = b"\r\n" if part.startswith(b"\r\n") else b"\n"
    head, _, body = part[len(eol):].partition(eol + eol)
    found = re.search(rb"(?im)^content-type:\s*([^\r\n;]+)", head)
    return (found[1].decode().strip() if found else "application/octet-stream",
            body[:-len(eol)] if body.endswith(eol) else body)


_emulator_read_data = emulator._read_data
emulator._read_data = _read_data  # Request.data looks the reader up by name, at each request


class _Handler(RequestHandler):  # type: ignore[misc]
    storage: Any

    def do_GET(self) -> None:
        found = _DOWNLOAD.match(urlparse(self.path).path)
        suffix = _SUFFIX.match(self.headers.get("Range", ""))
        if found and suffix:
            try:
                size = len(self.storage.get_file(found["bucket"], unquote(found["name"])))
            except NotFound:
                size = None  # the handler answers 404 itself
            if size is not None:
                start = max(0, size - int(suffix["n"]))
                self.headers.replace_header("Range", f"bytes={start}-")
        super().do_GET()

    def do_POST(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if query.get("ifGenerationMatch") == ["0"] and self._exists(url.path, query):
            body = b'{"error": {"code": 412, "message": "conditionNotMet"}}'
            self.send_response(412, "Precondition Failed")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_POST()

    def _exists(self, path: str, query: dict[str, list[str]]) -> bool:
        """Whether the object an upload names exists (named in the query, or in the JSON
        metadata part of a multipart body, which is read here and handed on unread)."""
        bucket = path.rstrip("/").split("/b/", 1)[-1].split("/", 1)[0]
        names = query.get("name", [])
        if not names:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.rfile = io.BytesIO(body)
            meta = _METADATA.search(body)
            names = [json.loads(meta[1])["name"]] if meta else []
        if not names:
            return False
        try:
            self.storage.get_file_obj(bucket, names[0])
        except NotFound:
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the emulator logs every request


class _Server(HTTPServer):
    request_queue_size = 256  # gcsfs opens many connections at once; one thread serves them

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up before its answer (a cancelled read) is no fault of the
        # server's; anything else is printed as usual.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class GcsServer:
    """The server, started on 127.0.0.1 at a free port with `bucket` created."""

    def __init__(self, bucket: str) -> None:
        logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # a 404 is no error
        self.storage = Storage(use_memory_fs=True)
        # The emulator rewrites a JSON of every object's metadata on each write (to persist
        # them); in memory that only makes writes slower as the session's objects pile up.
        self.storage._write_config_to_file = lambda: None
        buckets.create_bucket(bucket, self.storage)
        self._httpd = _Server(("127.0.0.1", 0), partial(_Handler, self.storage))
        host, port = self._httpd.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="gcs-emulator")
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=30)
