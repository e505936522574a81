"""`parse-edge broker`: run the embedded broker, or write Mosquitto configuration for a fleet."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from edge.errors import UserError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str) -> None:
    """Register `broker run` and `broker mosquitto-conf`."""
    parser = sub.add_parser(name, help="run the embedded broker or write Mosquitto configuration",
                            description="Run the embedded MQTT broker, or write mosquitto.conf, "
                                        "an ACL and a password file for a fleet.")
    actions = parser.add_subparsers(dest="broker_command", metavar="ACTION")
    actions.required = True

    run_parser = actions.add_parser("run", help="run the embedded amqtt broker until Ctrl-C",
                                    description="Run the embedded amqtt broker (MQTT 3.1.1) in the "
                                                "foreground until Ctrl-C.")
    run_parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run_parser.add_argument("--port", type=int, default=1883, help="TCP port (default 1883)")
    run_parser.set_defaults(run=run_broker)

    conf = actions.add_parser("mosquitto-conf", help="write mosquitto.conf + acl + passwd for a fleet",
                              description="Write mosquitto.conf, an ACL (each agent writes only its "
                                          "own topics; MQTT username = agent id) and, when the config "
                                          "sets broker credentials, a password file.")
    conf.add_argument("config", metavar="CONFIG", help="fleet config (YAML)")
    conf.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    conf.add_argument("--port", type=int, default=None,
                      help="listener port (default: from broker.url, else 1883, or 8883 with TLS)")
    conf.add_argument("--bind", default=None, metavar="ADDRESS",
                      help="listen only on this address (default: every interface)")
    conf.add_argument("--tls-cert", default=None, metavar="PEM",
                      help="server certificate (default: broker.tls.cert_file)")
    conf.add_argument("--tls-key", default=None, metavar="PEM",
                      help="server key (default: broker.tls.key_file)")
    conf.add_argument("--require-client-cert", action="store_true",
                      help="with TLS, require clients to present a certificate signed by the CA")
    conf.add_argument("--persistence-dir", default="/var/lib/mosquitto/",
                      help="where mosquitto keeps retained messages (default /var/lib/mosquitto/)")
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


def run_mosquitto_conf(args: argparse.Namespace) -> int:
    """Load the fleet config and write the three files."""
    # Imported here: every CLI module loads at start-up, and a board that only runs
    # `parse-edge infer` has no paho-mqtt.
    from broker.client import TlsFiles
    from broker.mosquitto import MosquittoSettings, write_mosquitto_config
    from edge.config.load import load_config

    cfg = load_config(args.config)
    tls_cfg = cfg.broker.tls
    tls: TlsFiles | None = None
    if tls_cfg is not None or args.tls_cert or args.tls_key:
        cert = args.tls_cert or (tls_cfg.cert_file if tls_cfg else None)
        key = args.tls_key or (tls_cfg.key_file if tls_cfg else None)
        ca = tls_cfg.ca_file if tls_cfg else None
        if not cert or not key:
            raise UserError(f"{cfg.source}: broker.tls: the Mosquitto listener needs a server "
                            "certificate and key (broker.tls.cert_file/key_file or --tls-cert/--tls-key)")

        def resolve(path: str | None) -> str | None:
            return str(cfg.resolve_path(path)) if path else None

        tls = TlsFiles(resolve(ca), args.tls_cert or resolve(cert), args.tls_key or resolve(key))
        for field_name, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file),
                                 ("key_file", tls.key_file)):
            if path and not Path(path).is_file():
                raise UserError(f"{cfg.source}: broker.tls.{field_name}: no such file {path}")
    port = args.port if args.port is not None else _listener_port(cfg.broker.url, tls is not None,
                                                                  cfg.source)
    settings = MosquittoSettings(
        fleet=cfg.fleet, agent_ids=[spec.id for spec in cfg.agent_specs], port=port,
        bind_address=args.bind, username=cfg.broker.username, password=cfg.broker.password,
        tls=tls, require_client_certificate=args.require_client_cert,
        persistence=not args.no_persistence, persistence_dir=args.persistence_dir,
    )
    try:
        files = write_mosquitto_config(settings, Path(args.out))
    except ValueError as exc:
        raise UserError(f"{cfg.source}: {exc}") from None
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write ({exc.strerror})") from None
    print(f"wrote {files.conf}")
    print(f"wrote {files.acl} ({len(settings.agent_ids)} agents; each connects with MQTT username "
          "= its agent id)")
    if files.passwd is not None:
        print(f"wrote {files.passwd} (users {settings.username} and every agent id, all with the "
              f"config's password; hashed with {files.passwd_tool})")
    print(f"run: mosquitto -c {files.conf}")
    return 0
