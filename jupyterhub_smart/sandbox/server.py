"""Runs the sandbox EHR process: store, app, waitress, request log, shutdown.

The ready line ``SMART sandbox ready: iss=...`` is printed only once the
listening socket exists, so whoever waits for it (tests, ``demo``) can connect
at once. Every request is logged as method, path, status and client id: never
a query string or body, which is where codes, tokens and assertions travel.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from .auth.tokens import CLIENT_ID_ENVIRON_KEY
from .settings import SandboxSettings

log = logging.getLogger("jupyterhub_smart.sandbox")
access_log = logging.getLogger("jupyterhub_smart.sandbox.access")

READY_LINE = "SMART sandbox ready: iss={iss}"
#: Exit status for "cannot start" errors a user can fix (port in use, bad clients file).
EXIT_USAGE = 2


class RequestLogMiddleware:
    """WSGI middleware writing one access-log line per request, without secrets."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        status_holder: list[str] = []

        def recording_start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            status_holder.append(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, recording_start_response)
        finally:
            access_log.info(
                "%s %s %s client_id=%s %.1fms",
                environ.get("REQUEST_METHOD", "-"),
                environ.get("PATH_INFO", "-"),
                status_holder[-1] if status_holder else "-",
                environ.get(CLIENT_ID_ENVIRON_KEY, "-"),
                (time.perf_counter() - started) * 1000,
            )


def configure_logging() -> None:
    """Plain timestamped lines on stdout; Authlib's debug output (which prints tokens) off."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for noisy in ("authlib", "waitress", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve(
    settings: SandboxSettings,
    *,
    dense_patient_observations: int = 0,
    auth_options: Any = None,
    bulk_options: Any = None,
) -> int:
    """Build everything and serve until SIGTERM or SIGINT; returns the exit status."""
    configure_logging()
    from waitress import create_server

    from .app import create_app
    from .auth.clients import ClientRegistry, ClientRegistryError
    from .auth.server import build_auth
    from .fhir import FHIRStore

    try:
        registry = ClientRegistry.from_file(settings.clients_file)
    except ClientRegistryError as exc:
        print(f"jupyterhub-smart sandbox: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store = FHIRStore(settings.data_dir / "fhir.sqlite")
    store.ensure_generated(
        patients=settings.patients,
        seed=settings.seed,
        dense_patient_observations=dense_patient_observations,
    )
    log.info("FHIR store ready in %.1fs (%s)", time.perf_counter() - started, settings.data_dir)
    auth = build_auth(settings, registry, auth_options)
    app = create_app(settings, store, auth=auth, bulk=bulk_options)
    if settings.origin.startswith("http://") and settings.host not in (
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        # Authlib refuses plain-HTTP OAuth off loopback; a sandbox on a LAN is the user's choice.
        os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
        log.warning(
            "serving OAuth over plain HTTP on %s: use this sandbox for testing only", settings.host
        )

    try:
        server = create_server(
            RequestLogMiddleware(app),
            host=settings.host,
            port=settings.port,
            threads=8,
            ident="jupyterhub-smart-sandbox",
            max_request_header_size=64 * 1024,
            max_request_body_size=2 * 1024 * 1024,
            clear_untrusted_proxy_headers=True,
        )
    except OSError as exc:
        auth.close()
        if exc.errno == errno.EADDRINUSE:
            print(
                f"jupyterhub-smart sandbox: port {settings.port} on {settings.host} is already in use; "
                "stop the other process or pass --port",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(
                f"jupyterhub-smart sandbox: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_USAGE

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(READY_LINE.format(iss=settings.fhir_base_url), flush=True)
    try:
        server.run()  # returns after closing on SystemExit/KeyboardInterrupt
    finally:
        auth.close()
        close = getattr(store, "close", None)
        if callable(close):
            close()
        log.info("sandbox stopped")
    return 0
