"""Which network address a request came from, for per-client bounds and the audit trail.

JupyterHub serves behind its proxy (configurable-http-proxy, Traefik ...) with
tornado's ``xheaders``: ``request.remote_ip`` is the last ``X-Forwarded-For``
entry not in ``JupyterHub.trusted_downstream_ips``, *unless the request carries
``X-Real-Ip``*, which tornado takes as it is. configurable-http-proxy appends
the real peer to ``X-Forwarded-For`` but passes a client's ``X-Real-Ip``
through untouched, so on a default deployment anyone can claim any address
with that one header, and a per-address bound keyed on ``remote_ip`` would
bound nothing.

:func:`client_address` follows the ``X-Forwarded-For`` chain the same way and
ignores ``X-Real-Ip``:

* hub behind JupyterHub's proxy only: the address the proxy saw;
* behind a load balancer or ingress in front of that proxy: list its
  addresses in ``JupyterHub.trusted_downstream_ips`` and the address *it* saw
  is used (it must append to, or overwrite, ``X-Forwarded-For``);
* no ``X-Forwarded-For`` (a request to the hub's own port): the TCP peer.
"""

from __future__ import annotations

from typing import Any

from tornado import netutil

__all__ = ["client_address"]


def client_address(request: Any) -> str:
    """The client's address as the outermost trusted proxy saw it (module docstring)."""
    context = getattr(getattr(request, "connection", None), "context", None)
    trusted = getattr(context, "trusted_downstream", None) or set()
    address = getattr(context, "address", None)
    peer = address[0] if isinstance(address, tuple) and address else None
    if not isinstance(peer, str):
        peer = str(getattr(request, "remote_ip", "") or "unknown")
    chain = request.headers.get("X-Forwarded-For")
    if not chain:
        return peer
    candidate = peer
    for entry in reversed(chain.split(",")):
        candidate = entry.strip()
        if candidate not in trusted:
            break
    return candidate if netutil.is_valid_ip(candidate) else peer
