"""A tiny MJPEG-over-HTTP camera for tests: ``python mjpeg_server.py PORT IMAGE [IMAGE ...]``.

Serves ``/stream.mjpg`` as multipart/x-mixed-replace JPEG frames (what many IP cameras serve), the
given images in a loop at about 20 frames per second, on 127.0.0.1 only. Killing the process is how
a test makes the stream die mid-run; starting it again on the same port brings it back.
"""

from __future__ import annotations

import io
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

BOUNDARY = b"edgekitframe"


def main() -> None:
    port, paths = int(sys.argv[1]), sys.argv[2:]
    frames = []
    for path in paths:
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=95)
        frames.append(buffer.getvalue())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path != "/stream.mjpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
            self.end_headers()
            index = 0
            try:
                while True:
                    jpeg = frames[index % len(frames)]
                    self.wfile.write(
                        b"--"
                        + BOUNDARY
                        + b"\r\nContent-Type: image/jpeg\r\n"
                        + f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                        + jpeg
                        + b"\r\n"
                    )
                    self.wfile.flush()
                    index += 1
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
