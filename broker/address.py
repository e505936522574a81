"""Where a broker is: `mqtt://[user:pass@]host[:port]` / `mqtts://...` URLs, and the TLS files."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS: the CA to trust, and this client's certificate and key (optional)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker listens, parsed from `mqtt://[user:pass@]host[:port]` or `mqtts://…`."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """`mqtt://host:port` or `mqtts://host:port` (no credentials)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker url {url!r}: expected mqtt://host:port or mqtts://host:port")
    if not parts.hostname:
        raise ValueError(f"broker url {url!r}: no host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"broker url {url!r}: port is not a number in 1..65535") from None
    if parts.path not in ("", "/"):
        raise ValueError(f"broker url {url!r}: unexpected path {parts.path!r}")
    return BrokerAddress(parts.hostname, port, scheme in ("mqtts", "ssl"),
                         unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None)
