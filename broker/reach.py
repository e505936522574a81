"""Why a broker cannot be reached: a name that does not resolve, nothing listening, silence, or a
TLS handshake that fails (untrusted certificate, host name mismatch, refused client certificate,
a plain listener).

paho retries a failed connection in silence; `broker.client.MqttClient` asks these once, by hand,
to turn "no CONNACK" into a cause a user can act on.
"""

from __future__ import annotations

import socket
import ssl

from broker.address import BrokerAddress, TlsFiles


def tls_problem(address: BrokerAddress, tls: TlsFiles, timeout_s: float = 5.0) -> str | None:
    """Try the TLS handshake paho makes (CA, client certificate, host name); say what fails.

    Returns
    -------
    str or None
        One line naming the TLS failure (certificate not trusted, host name mismatch, client
        certificate refused, unreadable files), or None when the handshake succeeds or the broker
        cannot be reached at all (not a TLS problem: the caller keeps waiting).
    """
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot load the TLS files ({exc})"
    try:
        sock = socket.create_connection((address.host, address.port), timeout_s)
    except OSError:
        return None
    try:
        with sock, context.wrap_socket(sock, server_hostname=address.host):
            return None
    except TimeoutError:
        return (f"the broker accepted the TCP connection but did not answer the TLS handshake "
                f"within {timeout_s:g} s (a plain mqtt:// listener on port {address.port}?)")
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
        # An MQTT listener reads the ClientHello as a malformed packet and hangs up.
        return (f"the broker closed the connection during the TLS handshake (a plain mqtt:// "
                f"listener on port {address.port}?)")
    except ssl.SSLCertVerificationError as exc:
        trusted = tls.ca_file or "the system CAs"
        return (f"the broker's certificate does not verify against {trusted} for host "
                f"{address.host!r} ({exc.verify_message})")
    except ssl.SSLError as exc:
        return f"{exc.reason or exc} (a client certificate the broker does not accept?)"
    except OSError:
        return None


def reach_problem(address: BrokerAddress, timeout_s: float = 3.0) -> str | None:
    """Say why the broker's address cannot be reached (name, refusal, silence), or None if it can."""
    try:
        socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"the host name {address.host!r} does not resolve ({exc.strerror})"
    try:
        with socket.create_connection((address.host, address.port), timeout_s):
            return None
    except ConnectionRefusedError:
        return f"nothing listens on {address.host} port {address.port} (connection refused)"
    except TimeoutError:
        return f"no answer from {address.host} port {address.port} within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot reach {address.host} port {address.port} ({exc.strerror or exc})"


