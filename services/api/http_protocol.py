"""uvicorn's HTTP/1.1 protocol (h11), answering a request it cannot parse in the API's one
error shape (``400 bad_request``) instead of uvicorn's plain-text line.

Such a request never reaches the app, so no middleware or handler can answer it; uvicorn lets
a deployment choose the protocol class (``http=``), and this one overrides the single method
that writes the 400. It uses only what that method of uvicorn's own class uses: the h11
connection and the transport.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MALFORMED_REQUEST = "the request is not valid HTTP/1.1"


class JsonErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            {"error": {"code": "bad_request", "message": MALFORMED_REQUEST, "details": None}}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
