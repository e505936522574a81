"""Reconnect at once when the link to the broker comes back: watch the interface's carrier.

Why: while a link is down TCP doubles its retransmission timeout on every expiry (RFC 6298,
section 5.5; Linux starts at 200 ms and caps it at 120 s), so what was queued during an outage of
a few seconds waits for the next expiry after the link returns: 1.6-3.2 s after a 4 s outage,
longer than a round's deadline (docs/field.md measures it). A new connection sends its SYN at
once. A board sees its own link return as the carrier of the interface that reaches the broker
(cable, switch port, Wi-Fi re-association): the kernel's IFF_RUNNING flag, read through psutil
(already a board dependency). An outage beyond the first hop (a site's backhaul) leaves the
carrier up and stays TCP's to recover.

`CarrierWatch` polls that flag and calls back on every down -> up transition; `interface_of`
names the interface holding a socket's local address. Loopback is never watched, and nothing is
without psutil: the inference-only bundle (devices.bundle, Role.INFER) does not ship it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# 10 polls per second: a returning link is noticed within 0.1 s, a small share of a round's
# deadline (seconds); one psutil.net_if_stats() call costs tens of microseconds on a board.
POLL_S = 0.1


def interface_of(local_address: str) -> str | None:
    """The interface holding `local_address` (a socket's own IP), or None (loopback, unknown).

    Parameters
    ----------
    local_address : str
        An IPv4 or IPv6 address as ``socket.getsockname()[0]`` gives it (a ``%scope`` suffix is
        ignored).
    """
    bare = local_address.split("%", 1)[0]
    try:
        if ipaddress.ip_address(bare).is_loopback:
            return None
        import psutil
    except (ValueError, ImportError):
        return None
    for name, addresses in psutil.net_if_addrs().items():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6) \
                    and address.address.split("%", 1)[0] == bare:
                return name
    return None


def carrier_up(interface: str) -> bool | None:
    """Whether `interface` is up with a carrier (IFF_UP and IFF_RUNNING); None if it is gone."""
    import psutil

    stats = psutil.net_if_stats().get(interface)
    return None if stats is None else stats.isup


class CarrierWatch:
    """Call `on_return(interface)` each time the watched interface's carrier comes back.

    Parameters
    ----------
    on_return : Callable[[str], None]
        Called on the watch thread after a down -> up transition (an interface that vanished
        and reappeared counts as down then up).
    poll_s : float
        Seconds between looks at the carrier.
    """

    def __init__(self, on_return: Callable[[str], None], poll_s: float = POLL_S) -> None:
        self._on_return = on_return
        self._poll_s = poll_s
        self._interface: str | None = None
        self._was_up: bool | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.returns = 0  # carrier returns seen (for logs and tests)

    @property
    def interface(self) -> str | None:
        """The interface being watched, or None."""
        return self._interface

    @property
    def running(self) -> bool:
        """Whether the watch thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def watch(self, interface: str | None) -> None:
        """Watch `interface` from now on (None: watch nothing); starts the thread when needed.

        After `stop` a new `watch` starts again (a client that reconnects with another protocol
        version is stopped and started).
        """
        with self._lock:
            if interface != self._interface:
                self._interface, self._was_up = interface, None
            if interface is not None and self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(self._stopped,),
                                                name="carrier-watch", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop watching and end the thread."""
        with self._lock:
            stopped, thread = self._stopped, self._thread
            self._stopped, self._thread = threading.Event(), None
            self._interface, self._was_up = None, None
        stopped.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2 * self._poll_s + 1)

    def _run(self, stopped: threading.Event) -> None:
        while not stopped.wait(self._poll_s):
            with self._lock:
                interface = self._interface
            if interface is None:
                continue
            up = bool(carrier_up(interface))
            with self._lock:
                was_up, self._was_up = self._was_up, up
            if up and was_up is False:
                self.returns += 1
                try:
                    self._on_return(interface)
                except Exception:  # the callback's bug must not end the watch
                    log.exception("carrier callback failed on %s", interface)
