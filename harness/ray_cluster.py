"""Connecting the sweep driver to Ray: the embedded single-node Ray, or an existing cluster.

Embedded (no address): ``ray.init(address="local")`` bound to 127.0.0.1 only
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), no dashboard, worker logs kept out of the
terminal. Token authentication (on by default in Ray 2.60) stays on: unless ``RAY_AUTH_MODE``,
``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` is set, the driver makes a random token for the
session and hands it to the Ray processes it starts through ``RAY_AUTH_TOKEN``; nothing is
written to ``~/.ray``.

An existing cluster (``--ray-address ADDR`` or ``$RAY_ADDRESS``) is reached within a deadline
(`connect_timeout_s`: ``$MAGE_RAY_CONNECT_TIMEOUT``, default 30 s), in three steps, so that a
wrong address, port or token ends in one line naming the address instead of Ray's endless
retries:

1. the port must accept a TCP connection (retried until the deadline);
2. a throwaway process runs ``ray.init(address=ADDR)`` and is killed at the deadline; an
   authentication failure in its log ends the wait at once;
3. only then does this process call ``ray.init``.

The cluster's token is used as the README says: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``
or the ``~/.ray/auth_token`` that ``ray start`` reads. Ray 2.60 turns token mode on for a
driver only when it finds a local cluster by itself, never for an explicit address, so with a
token at hand and ``RAY_AUTH_MODE`` unset this module sets ``RAY_AUTH_MODE=token``. A loopback
address (``127.0.0.1:PORT``) is kept as given: Ray would otherwise rewrite it to this
machine's network address, where a cluster started on loopback does not listen.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DEFAULT_CONNECT_TIMEOUT_S = 30.0
TIMEOUT_ENV = "MAGE_RAY_CONNECT_TIMEOUT"
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
# what Ray's GCS client logs when the cluster rejects the driver's token
_AUTH_FAILURE = re.compile(r"InvalidAuthToken|Unauthenticated|AuthenticationError")
_PROBE = (
    "import logging, sys, ray\n"
    "ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)\n"
    "ray.shutdown()\n"
)


class ClusterError(RuntimeError):
    """The Ray cluster cannot be reached in time or refused this driver; the message names the
    address and says what to set."""


def connect_timeout_s() -> float:
    """Seconds to wait for an existing cluster: ``$MAGE_RAY_CONNECT_TIMEOUT`` or 30."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ClusterError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def _loopback_env() -> None:
    """Keep Ray on 127.0.0.1 (read by ray_constants at import: patch it if ray is loaded)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray._private.ray_constants" in sys.modules:
        sys.modules["ray._private.ray_constants"].ENABLE_RAY_CLUSTER = False


def _embedded_ray_env() -> None:
    """Loopback only, token auth with a per-session token (see the module docstring)."""
    _loopback_env()
    if not any(k in os.environ for k in AUTH_ENV):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def token_available() -> bool:
    """A cluster token is at hand: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def _cluster_auth_env() -> None:
    """Token mode when a token is at hand and the user did not choose a mode."""
    if "RAY_AUTH_MODE" in os.environ or not token_available():
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:
        # Ray caches its config (auth mode included) when first read; Ray's own
        # _enable_token_auth refreshes it the same way, and no public API does.
        sys.modules["ray._raylet"].Config.initialize("")


def _host_port(address: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address.strip())
    return (match.group(1), int(match.group(2))) if match else None


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _wait_for_port(address: str, host: str, port: int, deadline: float, timeout: float) -> None:
    last = ""
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(left, 5.0))):
                return
        except OSError as err:
            last = err.strerror or type(err).__name__
        if time.monotonic() + 0.5 >= deadline:
            raise ClusterError(
                f"no Ray cluster answers at {address} ({last}; tried for {timeout:g} s, set "
                f"{TIMEOUT_ENV} or --ray-timeout for longer); start it with `ray start --head` "
                "or give the head node's GCS address (HOST:6379 by default)"
            )
        time.sleep(0.5)


def _auth_message(address: str) -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        hint = "this driver has RAY_AUTH_MODE=disabled: unset it, or set RAY_AUTH_MODE=token"
    elif token_available():
        hint = (
            "this driver's token is not the cluster's: set RAY_AUTH_TOKEN to the cluster's "
            "token (`ray get-auth-token` on its head node) or RAY_AUTH_TOKEN_PATH to its file"
        )
    else:
        hint = (
            "this driver has no token: set RAY_AUTH_TOKEN to the cluster's token (`ray "
            "get-auth-token` on its head node) or RAY_AUTH_TOKEN_PATH to its file"
        )
    return f"the Ray cluster at {address} refused the connection (token authentication): {hint}"


def _probe(address: str, deadline: float, timeout: float) -> None:
    """``ray.init(address)`` in a throwaway process, killed at the deadline or on an
    authentication failure; raises ClusterError with the cause."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROBE, address],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            if any(_AUTH_FAILURE.search(line) for line in list(lines)):
                raise ClusterError(_auth_message(address))
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"the Ray cluster at {address} did not accept a connection within "
                    f"{timeout:g} s (something listens there, but it is not answering as a Ray "
                    f"head's GCS; set {TIMEOUT_ENV} or --ray-timeout to wait longer)"
                )
            time.sleep(0.1)
        reader.join(timeout=5)
        if proc.returncode != 0:
            if any(_AUTH_FAILURE.search(line) for line in lines):
                raise ClusterError(_auth_message(address))
            cause = next((ln.strip() for ln in reversed(lines) if "Error" in ln), "")
            cause = cause or (lines[-1].strip() if lines else f"exit {proc.returncode}")
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {cause}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def connect(address: str) -> None:
    """Connect this process to the cluster at ``address`` within `connect_timeout_s`."""
    import ray

    timeout = connect_timeout_s()
    deadline = time.monotonic() + timeout
    hostport = _host_port(address)
    if hostport is None and address != "auto":
        raise ClusterError(
            f"Ray address {address!r}: expected HOST:PORT (the head node's GCS address, "
            "e.g. 10.0.0.5:6379), ray://HOST:PORT or auto"
        )
    if hostport and _is_loopback(hostport[0]):
        _loopback_env()
    _cluster_auth_env()
    if hostport:
        _wait_for_port(address, *hostport, deadline, timeout)
    _probe(address, deadline, timeout)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as err:  # it went away since the probe
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {cause}") from None


def start_ray(address: str | None = None) -> bool:
    """Connect to ``address`` / $RAY_ADDRESS, or start the embedded Ray. True if started here."""
    import ray

    if ray.is_initialized():
        return False  # the caller's Ray (a notebook, a test fixture)
    if address:
        connect(address)
    elif os.environ.get("RAY_ADDRESS"):
        connect(os.environ["RAY_ADDRESS"])
    else:
        _embedded_ray_env()
        ray.init(
            address="local",
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    return True
