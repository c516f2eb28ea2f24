"""MQTT sink: each anomaly and a periodic heartbeat to a broker, so a line's dashboard sees the camera.

Topics under ``topic`` (default ``edgekit``): ``anomaly`` (one event's JSON per anomalous frame),
``heartbeat`` (counters every ``heartbeat_s``, a last one with state "stopped"), and ``status``
("online" retained on connect, "offline" retained on close or, as the last will, when the
camera drops off). paho's own thread connects and reconnects with back-off; while the broker is
away, messages wait in paho's bounded queue and the newest are dropped (and counted) beyond it.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from typing import Any, Optional

from edgekit.errors import EdgekitError
from edgekit.serve.events import Scored, log

MAX_QUEUED = 1000  # messages paho keeps while the broker is away; beyond it new ones are dropped
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
KEEPALIVE_S = 30
FLUSH_S = 3.0  # close() waits at most this long for the broker to acknowledge what is in flight


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgekitError("MQTT needs paho-mqtt: pip install 'edgekit-anomaly[mqtt]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise EdgekitError("MQTT needs paho-mqtt 2.x: pip install -U 'edgekit-anomaly[mqtt]'")
    return mqtt


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class MqttSink:
    """Publishes anomalies and heartbeats to an MQTT broker without ever blocking on it."""

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        topic: str = "edgekit",
        heartbeat_s: float = 30.0,
        client_id: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        qos: int = 1,
        tls: bool = False,
        bundle: Optional[str] = None,
    ) -> None:
        topic = topic.strip("/")
        if not host:
            raise EdgekitError("MQTT needs a broker host")
        if not 0 < port < 65536:
            raise EdgekitError(f"MQTT port must be 1..65535, got {port}")
        if not topic or "+" in topic or "#" in topic:
            raise EdgekitError(f"MQTT topic must be a plain topic without + or #, got {topic!r}")
        if qos not in (0, 1, 2):
            raise EdgekitError(f"MQTT qos must be 0, 1 or 2, got {qos}")
        if heartbeat_s <= 0:
            raise EdgekitError(f"MQTT heartbeat must be > 0 s, got {heartbeat_s:g}")
        if password is not None and username is None:
            raise EdgekitError("an MQTT password needs a username")
        mqtt = _paho()
        self.host, self.port, self.topic, self.qos, self.heartbeat_s = host, port, topic, qos, heartbeat_s
        self.bundle = bundle  # the bundle's fingerprint; taken from the events when not given
        self.frames = self.anomalies = self.dropped = 0
        self._started = time.monotonic()
        self._connected = self._ever_connected = self._closing = False
        self._unreachable_logged = self._drop_logged = False
        self._lock = threading.Lock()  # guards the two sets below; never held while calling paho
        self._pending: set[int] = set()  # mids published (qos > 0) and not yet acknowledged
        self._early_acks: set[int] = set()  # mids acknowledged before publish() returned them
        self._err_queue_size = mqtt.MQTT_ERR_QUEUE_SIZE
        self._queued_ok = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)  # NO_CONN: sent after reconnect

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        if username is not None:
            client.username_pw_set(username, password)
        if tls:
            client.tls_set()  # the system's CA store
        client.will_set(f"{topic}/status", "offline", qos=max(qos, 1), retain=True)
        client.max_queued_messages_set(MAX_QUEUED)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_connect_fail, client.on_publish = self._on_connect_fail, self._on_publish
        self._client = client
        client.connect_async(host, port, keepalive=KEEPALIVE_S)
        client.loop_start()  # paho's thread: connects, retries with back-off, reconnects
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="mqtt-heartbeat", daemon=True)
        self._heartbeat.start()

    def handle(self, item: Scored) -> None:
        """Count every frame; publish the event of an anomalous one (queued by paho if offline)."""
        self.frames += 1
        self.bundle = item.event.bundle or self.bundle
        if not item.event.is_anomalous:
            return
        self.anomalies += 1
        self._publish("anomaly", json.dumps(item.event.to_json()))

    def close(self) -> None:
        """Last heartbeat and "offline", wait up to FLUSH_S s for acknowledgements, disconnect."""
        self._closing = True  # a reconnect from now on must not say "online" again
        self._stop.set()
        self._heartbeat.join()
        if self._connected:
            self._publish("heartbeat", self._heartbeat_json("stopped"))
        self._publish("status", "offline", retain=True)
        deadline = time.monotonic() + FLUSH_S
        while self._pending and self._connected and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._pending:
            log(f"MQTT: {len(self._pending)} message(s) not acknowledged by {self.host}:{self.port} at shutdown")
        self._client.disconnect()
        self._client.loop_stop()

    def _publish(self, subtopic: str, payload: str, *, retain: bool = False) -> None:
        info = self._client.publish(f"{self.topic}/{subtopic}", payload, qos=self.qos, retain=retain)
        if info.rc == self._err_queue_size:
            self.dropped += 1
            if not self._drop_logged:
                self._drop_logged = True
                log(f"MQTT: {MAX_QUEUED} messages wait for {self.host}:{self.port}; dropping new ones until it is back")
            return
        if self.qos and info.rc in self._queued_ok:
            with self._lock:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                else:
                    self._pending.add(info.mid)

    def _heartbeat_json(self, state: str) -> str:
        return json.dumps(
            {
                "time": _now(),
                "state": state,
                "frames": self.frames,
                "anomalies": self.anomalies,
                "uptime_s": round(time.monotonic() - self._started, 1),
                "bundle": self.bundle,
            }
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self._connected:  # a heartbeat says "alive now": never queue a stale one
                self._publish("heartbeat", self._heartbeat_json("running"))

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            if not self._unreachable_logged:
                self._unreachable_logged = True
                log(f"MQTT broker {self.host}:{self.port} refused the connection ({reason_code}); retrying")
            return
        log(f"MQTT {'reconnected' if self._ever_connected else 'connected'} to {self.host}:{self.port}")
        self._connected = self._ever_connected = True
        self._unreachable_logged = self._drop_logged = False
        if not self._closing:
            self._publish("status", "online", retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_connected, self._connected = self._connected, False
        if self._closing:
            log(f"MQTT disconnected from {self.host}:{self.port}")
        elif was_connected:
            log(
                f"MQTT connection to {self.host}:{self.port} lost ({reason_code}); "
                f"reconnecting with back-off up to {RECONNECT_MAX_S} s"
            )

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log(f"MQTT broker {self.host}:{self.port} not reachable; retrying with back-off up to {RECONNECT_MAX_S} s")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
            elif self.qos:
                self._early_acks.add(mid)
