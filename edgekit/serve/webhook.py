"""Webhook sink: POST each anomaly's event JSON to a URL (a ticketing system, a chat hook, a PLC gateway).

Standard library only (urllib). Connection errors, timeouts and 5xx answers are retried with
exponential back-off; a 4xx answer is the receiver refusing this request, so it is not repeated.
Giving up raises an EdgekitError, which the SinkWorker logs as one line and counts. Logs name only
the scheme, host and port: a hook's path often holds its secret.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Optional
from urllib.parse import urlsplit

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.serve.events import Scored, log

MAX_BACKOFF_S = 30.0
MAX_RESPONSE_BYTES = 64 * 1024  # read (and drop) at most this much of an answer


class WebhookSink:
    """POSTs event JSON to an http(s) URL off the inference thread, retrying transient failures."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        retries: int = 3,
        timeout_s: float = 5.0,
        backoff_s: float = 0.5,
        token: Optional[str] = None,
        anomalies_only: bool = True,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise EdgekitError(f"webhook URL must be http://HOST/... or https://HOST/..., got {url!r}")
        if retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise EdgekitError("webhook needs retries >= 0, timeout_s > 0 and backoff_s >= 0")
        self.url, self.retries, self.timeout_s, self.backoff_s = url, retries, timeout_s, backoff_s
        self.anomalies_only = anomalies_only
        self.where = f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2]}"  # no path, no user:password
        self.headers = {"Content-Type": "application/json", "User-Agent": f"edgekit/{__version__}"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
            if parts.scheme.lower() == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                log(f"webhook: the token goes to {self.where} unencrypted; use https://")
        self.sent = 0

    def handle(self, item: Scored) -> None:
        """POST the event (anomalies only, unless asked for all); raise after the last failed attempt."""
        if self.anomalies_only and not item.event.is_anomalous:
            return
        body = json.dumps(item.event.to_json()).encode()
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read(MAX_RESPONSE_BYTES)
                self.sent += 1
                return
            except urllib.error.HTTPError as exc:
                exc.close()
                why = f"HTTP {exc.code} {exc.reason}"
                if exc.code < 500:
                    raise EdgekitError(
                        f"{self.where} answered {why} to frame {item.event.frame}; not retried"
                    ) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, timed out, reset
                why = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        raise EdgekitError(
            f"gave up POSTing frame {item.event.frame} to {self.where} after {attempts} attempt(s): {why}"
        )

    def close(self) -> None:
        """Nothing to flush: each POST finishes (or gives up) inside handle."""
