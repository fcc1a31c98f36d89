"""Serving a test's stand-in HTTP server (SendGrid, Sentry, Kubernetes) on a thread."""

from __future__ import annotations

import socketserver
import threading

# socketserver's default lets `shutdown()` wait up to 0.5 s for the loop to notice; the
# SendGrid stand-in alone is closed by hundreds of tests, so that cost minutes a run.
POLL_SECONDS = 0.02


def serve_in_background(server: socketserver.BaseServer) -> threading.Thread:
    """Serve `server` on a daemon thread until `server.shutdown()`, which then returns
    within POLL_SECONDS."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True
    )
    thread.start()
    return thread
