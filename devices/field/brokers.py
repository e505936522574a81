"""One Mosquitto per site, in the site's gateway namespace, bridged to the hub over the backhaul.

The broker runs in the gateway namespace rather than the root one so that bridge traffic
between sites leaves through the gateway's ``wan0`` and crosses the rate-capped backhaul, as it
would between two real site gateways; two brokers in the root namespace would talk over loopback.

Sites form a star: every site but the hub bridges ``parse/#`` both ways to the hub
(mosquitto.conf(5), "Configuring Bridges"). A star rather than a mesh because Mosquitto bridges
have no loop detection across more than one hop: with three sites meshed, a message would reach a
site once per path.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devices.field import daemons
from devices.field.plan import MQTT_PORT, FieldPlan, SitePlan

BRIDGE_TOPIC = "parse/#"
PROBE_ROOT = "parse/_field"


def mosquitto_conf(plan: FieldPlan, site: SitePlan, extra: str = "") -> str:
    """Render the mosquitto.conf of one site's broker.

    Parameters
    ----------
    plan : FieldPlan
        The field (for the hub's backhaul address).
    site : SitePlan
        The site whose broker this is.
    extra : str
        Lines appended verbatim (e.g. the fleet's ACL and password file settings).
    """
    lines = [
        f"# parse-edge field {plan.name}, site {site.name} (namespace {site.netns})",
        "per_listener_settings false",
        "allow_anonymous true",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "max_queued_messages 10000",
        f"listener {MQTT_PORT} {site.gateway}",
        f"listener {MQTT_PORT} {site.wan_address}",
    ]
    if site.name != plan.hub:
        hub = plan.hub_site
        name = f"{plan.name}-{site.name}"
        lines += [
            f"connection {name}",
            f"address {hub.wan_address}:{MQTT_PORT}",
            f"topic {BRIDGE_TOPIC} both 1",
            f"remote_clientid {name}",
            f"local_clientid {name}-local",
            # A persistent bridge session: messages for a site whose backhaul is down are queued
            # by the hub and delivered when the bridge reconnects.
            "cleansession false",
            "bridge_protocol_version mqttv311",
            "try_private true",
            "notifications false",
            "keepalive_interval 30",
            "restart_timeout 1 10",
        ]
    return "\n".join(lines) + ("\n" + extra.rstrip("\n") if extra else "") + "\n"


def start_broker(mosquitto: str, site: SitePlan, conf: Path, log: Path,
                 timeout_s: float = 10.0) -> int:
    """Start the site's Mosquitto in its gateway namespace; return its pid.

    Raises
    ------
    DaemonError
        When it exits or does not listen on the gateway address within `timeout_s`.
    """
    pid = daemons.spawn_in_netns(site.netns, [mosquitto, "-c", str(conf)], log)
    daemons.wait_listening(pid, str(site.gateway), MQTT_PORT, log,
                           f"mosquitto of site {site.name}", timeout_s)
    return pid


class _Listener:
    def __init__(self, host: str, topic: str) -> None:
        self.got: set[str] = set()
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"field-probe-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect(host, MQTT_PORT, keepalive=30)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.got.add(msg.topic)

    def seen(self, topic: str) -> bool:
        with self.lock:
            return topic in self.got

    def close(self) -> None:
        self.client.disconnect()  # wakes the network loop, so loop_stop does not wait on it
        self.client.loop_stop()


def probe_bridges(plan: FieldPlan, timeout_s: float = 20.0) -> float:
    """Wait until every bridge carries messages both ways; return the seconds it took.

    For each site other than the hub, a probe published on the site's broker must arrive at
    the hub's and one published on the hub's must arrive at the site's, under
    ``parse/_field/<field>/probe/`` (outside every fleet's topics). Probes are re-published
    until they arrive: the bridge connects and subscribes asynchronously.

    Raises
    ------
    RuntimeError
        Naming the sites whose bridge did not carry a probe within `timeout_s`.
    """
    start = time.monotonic()
    leaves = [s for s in plan.sites if s.name != plan.hub]
    if not leaves:
        return 0.0
    root = f"{PROBE_ROOT}/{plan.name}/probe"
    listeners = {s.name: _Listener(str(s.gateway), f"{root}/#") for s in plan.sites}
    try:
        pending = {s.name for s in leaves}
        while pending:
            for name in sorted(pending):
                listeners[name].client.publish(f"{root}/{name}/up", b"1", qos=1)
                listeners[plan.hub].client.publish(f"{root}/{name}/down", b"1", qos=1)
            time.sleep(0.2)
            pending = {n for n in pending if not (listeners[plan.hub].seen(f"{root}/{n}/up")
                                                  and listeners[n].seen(f"{root}/{n}/down"))}
            if pending and time.monotonic() - start > timeout_s:
                raise RuntimeError(f"bridge to hub {plan.hub} carried no probe within "
                                   f"{timeout_s:g} s for site(s) {', '.join(sorted(pending))}")
    finally:
        for listener in listeners.values():
            listener.close()
    return time.monotonic() - start
