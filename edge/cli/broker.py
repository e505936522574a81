"""`parse-edge broker`: the embedded broker, a fleet's credentials and certificates, Mosquitto config.

The Mosquitto configuration is secure: per-agent passwords or client certificates, an ACL, never
anonymous clients.

    parse-edge broker credentials CONFIG --out creds/    # passwd, fleet.key, agents/<id>.secret
    parse-edge broker certs CONFIG --out pki/ --hostname broker.lan
    parse-edge broker mosquitto-conf CONFIG --out mq/ --credentials creds/ --certs pki/
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import UserError

if TYPE_CHECKING:
    from broker.client import TlsFiles
    from edge.config.schema import FleetConfig


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `broker run`, `broker credentials`, `broker certs` and `broker mosquitto-conf`."""
    parser = sub.add_parser(name, help="run the embedded broker; make credentials, certificates and "
                                       "Mosquitto configuration",
                            description="Run the embedded MQTT broker, make one identity per agent "
                                        "(MQTT secrets, client certificates) and write a secure "
                                        "Mosquitto configuration for a fleet.")
    actions = parser.add_subparsers(dest="broker_command", metavar="ACTION")
    actions.required = True

    run_parser = actions.add_parser("run", help="run the embedded amqtt broker until Ctrl-C",
                                    description="Run the embedded amqtt broker (MQTT 3.1.1) in the "
                                                "foreground until Ctrl-C.")
    run_parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run_parser.add_argument("--port", type=int, default=1883, help="TCP port (default 1883)")
    run_parser.set_defaults(run=run_broker)

    creds = actions.add_parser(
        "credentials", help="one MQTT secret per agent and the operator, the fleet key, a passwd file",
        description="Make a random MQTT secret per agent and for the operator, the fleet's HMAC key, "
                    "and Mosquitto's hashed password file. Secret files are mode 0600; copy "
                    "agents/<id>.secret and fleet.key into agent <id>'s bundle only.")
    creds.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    creds.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    creds.add_argument("--force", action="store_true", help="replace existing credentials in DIR")
    creds.set_defaults(run=run_credentials)

    certs = actions.add_parser(
        "certs", help="a trial CA, a server certificate and a client certificate per agent",
        description="Make a trial CA, a server certificate for the broker's host names and one client "
                    "certificate per agent (CN = agent id, for Mosquitto's use_identity_as_username) "
                    "and for the operator. Needs the 'cryptography' package.")
    certs.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    certs.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    certs.add_argument("--hostname", action="append", default=[], metavar="NAME",
                       help="a DNS name or IP address clients reach the broker at (repeatable; "
                            "default: broker.url's host, localhost and 127.0.0.1)")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    certs.add_argument("--force", action="store_true", help="replace an existing PKI in DIR")
    certs.set_defaults(run=run_certs)

    conf = actions.add_parser(
        "mosquitto-conf", help="write a secure mosquitto.conf + acl for a fleet",
        description="Write mosquitto.conf and an ACL (each agent writes only its own topics; MQTT "
                    "username = agent id; the operator reads the fleet). Clients authenticate by the "
                    "password file of `broker credentials` (made in DIR/credentials unless "
                    "--credentials names one) or, with --client-certs, by certificate. Anonymous "
                    "clients are never allowed.")
    conf.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    conf.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    conf.add_argument("--credentials", default=None, metavar="DIR",
                      help="output of `broker credentials` (default: DIR/credentials, made if absent)")
    conf.add_argument("--certs", default=None, metavar="DIR",
                      help="output of `broker certs`: a TLS listener with its CA and server certificate")
    conf.add_argument("--client-certs", action="store_true",
                      help="with --certs: clients log in by certificate (require_certificate, "
                           "use_identity_as_username) instead of password")
    conf.add_argument("--port", type=int, default=None,
                      help="listener port (default: from broker.url, else 1883, or 8883 with TLS)")
    conf.add_argument("--bind", default=None, metavar="ADDRESS",
                      help="listen only on this address (default: every interface)")
    conf.add_argument("--tls-cert", default=None, metavar="PEM",
                      help="server certificate (default: --certs, else broker.tls.cert_file)")
    conf.add_argument("--tls-key", default=None, metavar="PEM",
                      help="server key (default: --certs, else broker.tls.key_file)")
    conf.add_argument("--max-packet-kib", type=int, default=None, metavar="KIB",
                      help="largest MQTT packet the broker accepts (default 264 KiB: a 256 KiB chunk)")
    conf.add_argument("--persistence-dir", default=None, metavar="DIR",
                      help="where mosquitto keeps retained messages (default OUT/persistence: "
                           "not /var/lib/mosquitto/, the database of the machine's own broker)")
    conf.add_argument("--no-persistence", action="store_true", help="keep nothing across restarts")
    conf.set_defaults(run=run_mosquitto_conf)


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action (argparse sets `run` per action; this is the fallback)."""
    return int(args.run(args))


def run_broker(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C."""
    from broker.embedded import serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port: expected 0..65535, got {args.port}")
    ready = f"embedded broker (amqtt, MQTT 3.1.1) on mqtt://{args.host}:{args.port}; Ctrl-C stops it"
    try:
        asyncio.run(serve(args.host, args.port, ready=ready))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # amqtt wraps bind errors in BrokerError
        raise UserError(f"broker run on {args.host}:{args.port}: {exc}") from None
    return 0


def _listener_port(url: str, tls: bool, source: str) -> int:
    from broker.client import parse_broker_url

    if url in ("", "embedded"):
        return 8883 if tls else 1883
    try:
        return parse_broker_url(url).port
    except ValueError as exc:
        raise UserError(f"{source}: broker.url: {exc}") from None


def _fleet(config: str) -> FleetConfig:
    from edge.config.load import load_config

    return load_config(config)


def _out_dir(out: str, marker: str, force: bool) -> Path:
    path = Path(out)
    if (path / marker).exists() and not force:
        raise UserError(f"--out {out}: already holds {marker}; pass --force to replace it")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create ({exc.strerror})") from None
    return path


def run_credentials(args: argparse.Namespace) -> int:
    """Write the fleet's secrets and password file."""
    from broker.credentials import make_credentials, write_credentials

    cfg = _fleet(args.config)
    out = _out_dir(args.out, "passwd", args.force)
    try:
        files = write_credentials(make_credentials(cfg.fleet, [a.id for a in cfg.agent_specs]), out)
    except ValueError as exc:
        raise UserError(f"{cfg.source}: {exc}") from None
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    print(f"wrote {files.passwd} (Mosquitto password file: {len(files.secrets)} users, hashed)")
    print(f"wrote {files.fleet_key} (HMAC fleet key: into every bundle)")
    print(f"wrote {out / 'agents'}/<id>.secret ({len(files.secrets) - 1} agents: each into its own "
          f"bundle only) and {files.secrets['operator']}")
    return 0


def _hostnames(cfg: FleetConfig, extra: list[str]) -> list[str]:
    from broker.client import parse_broker_url

    names = list(extra)
    if not names:
        if cfg.broker.url not in ("", "embedded"):
            try:
                names.append(parse_broker_url(cfg.broker.url).host)
            except ValueError as exc:
                raise UserError(f"{cfg.source}: broker.url: {exc}") from None
        names += ["localhost", "127.0.0.1"]
    return list(dict.fromkeys(names))


def run_certs(args: argparse.Namespace) -> int:
    """Write the trial CA, the server certificate and the client certificates."""
    try:
        from broker.certs import write_pki
    except ImportError:
        raise UserError("broker certs: needs the 'cryptography' package "
                        "(pip install 'parse-edge[security]')") from None
    cfg = _fleet(args.config)
    hosts = _hostnames(cfg, args.hostname)
    out = _out_dir(args.out, "ca.pem", args.force)
    try:
        pki = write_pki(out, [a.id for a in cfg.agent_specs], hostnames=hosts, days=args.days)
    except ValueError as exc:
        field = "--days" if "days" in str(exc) else "--hostname" if "hostname" in str(exc) else cfg.source
        raise UserError(f"{field}: {exc}") from None
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    print(f"wrote {pki.ca_cert} and {pki.ca_key} (trial CA; keep the key on this machine)")
    print(f"wrote {pki.server_cert} and {pki.server_key} (broker; names: {', '.join(hosts)})")
    print(f"wrote {out / 'clients'}/<id>.pem/.key ({len(pki.clients)} client certificates, CN = user)")
    return 0


def _tls_files(args: argparse.Namespace, cfg: FleetConfig) -> TlsFiles | None:
    from broker.client import TlsFiles

    if args.certs:
        pki = Path(args.certs)
        tls = TlsFiles(str(pki / "ca.pem"), args.tls_cert or str(pki / "server.pem"),
                       args.tls_key or str(pki / "server.key"))
        source = "--certs"
    else:
        tls_cfg = cfg.broker.tls
        if tls_cfg is None and not (args.tls_cert or args.tls_key):
            return None
        cert = args.tls_cert or (tls_cfg.cert_file if tls_cfg else None)
        key = args.tls_key or (tls_cfg.key_file if tls_cfg else None)
        if not cert or not key:
            raise UserError(f"{cfg.source}: broker.tls: the Mosquitto listener needs a server "
                            "certificate and key (--certs, broker.tls.cert_file/key_file or "
                            "--tls-cert/--tls-key)")

        def resolve(path: str | None) -> str | None:
            return str(cfg.resolve_path(path)) if path else None

        tls = TlsFiles(resolve(tls_cfg.ca_file if tls_cfg else None), args.tls_cert or resolve(cert),
                       args.tls_key or resolve(key))
        source = f"{cfg.source}: broker.tls"
    for field_name, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file),
                             ("key_file", tls.key_file)):
        if path and not Path(path).is_file():
            raise UserError(f"{source}: {field_name}: no such file {path}")
    return tls


def run_mosquitto_conf(args: argparse.Namespace) -> int:
    """Load the fleet config and write mosquitto.conf and the ACL (and credentials when absent)."""
    # Imported here: every CLI module loads at start-up, and a board that only runs
    # `parse-edge infer` has no paho-mqtt.
    from broker.credentials import make_credentials, write_credentials
    from broker.mosquitto import MAX_PACKET_BYTES, MosquittoSettings, write_mosquitto_config

    cfg = _fleet(args.config)
    tls = _tls_files(args, cfg)
    if args.client_certs and tls is None:
        raise UserError("--client-certs: needs --certs (the CA that signed the client certificates)")
    agent_ids = [spec.id for spec in cfg.agent_specs]
    out = Path(args.out)
    password_file = None
    made_credentials = False
    if not args.client_certs:
        creds_dir = Path(args.credentials) if args.credentials else out / "credentials"
        password_file = creds_dir / "passwd"
        if not password_file.is_file():
            if args.credentials:
                raise UserError(f"--credentials {args.credentials}: no passwd file; make one with "
                                "`parse-edge broker credentials`")
            try:
                write_credentials(make_credentials(cfg.fleet, agent_ids), creds_dir)
            except OSError as exc:
                raise UserError(f"--out {args.out}: cannot write ({exc.strerror})") from None
            made_credentials = True
    port = args.port if args.port is not None else _listener_port(cfg.broker.url, tls is not None,
                                                                  cfg.source)
    max_packet = MAX_PACKET_BYTES if args.max_packet_kib is None else args.max_packet_kib * 1024
    settings = MosquittoSettings(
        fleet=cfg.fleet, agent_ids=agent_ids, port=port, bind_address=args.bind,
        password_file=password_file, tls=tls, require_client_certificate=args.client_certs,
        use_identity_as_username=args.client_certs, persistence=not args.no_persistence,
        persistence_dir=(args.persistence_dir if args.persistence_dir is not None
                         else str(Path(out).resolve() / "persistence")),
        max_packet_bytes=max_packet,
    )
    try:
        files = write_mosquitto_config(settings, out)
    except ValueError as exc:
        flag = {"port": "--port", "max_packet_bytes": "--max-packet-kib"}.get(str(exc).split(":")[0])
        raise UserError(f"{flag or cfg.source}: {exc}") from None
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    print(f"wrote {files.conf} (listener {port}{', TLS' if tls else ''}; anonymous clients refused)")
    print(f"wrote {files.acl} ({len(agent_ids)} agents, each writing only its own topics; "
          "MQTT username = agent id; user operator reads the fleet)")
    if args.client_certs:
        print("clients log in by certificate (CN = username); no password file")
    elif made_credentials and password_file is not None:
        print(f"wrote {password_file.parent}/ (passwd, fleet.key and one secret per agent: "
              "see `parse-edge broker credentials`)")
    else:
        print(f"password file: {password_file}")
    print(f"run: mosquitto -c {files.conf}")
    return 0
