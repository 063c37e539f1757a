"""``--zeroconf [NAME]``: advertise ``_wyoming._tcp.local.`` so Home Assistant finds the server.

The advertised address must be one a client can reach: when the server listens
on every interface (``0.0.0.0``) the library detects the host's outward address
(the interface that routes to the mDNS group), never ``0.0.0.0``; when it is
bound to one address, that address is advertised.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from typing import Optional

_LOG = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "*")


def advertised_host(bind_host: Optional[str]) -> Optional[str]:
    """The IPv4 address to advertise for a server bound to ``bind_host``; None = let the
    library detect the outward address (server bound to every interface)."""
    if bind_host is None or bind_host in WILDCARD_HOSTS:
        return None
    try:
        addr = ipaddress.ip_address(bind_host)
    except ValueError:
        return socket.gethostbyname(bind_host)  # a host name: its IPv4 address
    if addr.version != 4:
        raise ValueError(f"zeroconf advertises IPv4 addresses; the server is bound to {bind_host}")
    return str(addr)


class Advertiser:
    """A registered service; :meth:`close` withdraws it."""

    def __init__(self, zc) -> None:
        self._zc = zc
        self.host: str = zc.host
        self.name: str = zc.name
        self.port: int = zc.port

    async def close(self) -> None:
        aiozc = getattr(self._zc, "_aiozc", None)
        if aiozc is None:
            return
        with contextlib.suppress(Exception):
            await aiozc.async_unregister_all_services()
        with contextlib.suppress(Exception):
            await aiozc.async_close()


async def advertise(name: str, bind_host: Optional[str], port: int) -> Optional[Advertiser]:
    """Register the service; on failure log why and return None (the server keeps serving)."""
    zc = None
    try:
        from wyoming.zeroconf import HomeAssistantZeroconf  # noqa: PLC0415 - needs the zeroconf extra

        host = advertised_host(bind_host)
        zc = HomeAssistantZeroconf(port=port, name=name or None, host=host)
        if ipaddress.ip_address(zc.host).is_unspecified:
            raise ValueError("no routable address found to advertise")
        await zc.register_server()
    except Exception as err:  # noqa: BLE001 - discovery is a convenience, serving is not
        _LOG.error("zeroconf: cannot advertise %s on port %d: %s", name, port, err)
        if zc is not None:
            await Advertiser(zc).close()
        return None
    if ipaddress.ip_address(zc.host).is_loopback:
        _LOG.warning("zeroconf: advertising loopback address %s; only this host can connect", zc.host)
    _LOG.info("zeroconf: advertising %s at %s:%d", zc.name, zc.host, port)
    return Advertiser(zc)
