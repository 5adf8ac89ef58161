"""A client on the Python meshtastic library that sends COUNT texts, one every EVERY seconds,
the first at the Unix time START, each "LABEL n"; then prints one JSON line: the ids it sent
and every routing error the radio answered them with. Used by tests/interop.rs."""
import json
import sys
import time

import meshtastic.tcp_interface
from pubsub import pub

host, port, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count, every, start = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
errors = []


def on_receive(packet, interface):
    decoded = packet.get("decoded", {})
    if decoded.get("portnum") != "ROUTING_APP":
        return
    reason = decoded.get("routing", {}).get("errorReason", "NONE")
    if reason != "NONE":
        errors.append({"reason": reason, "request_id": decoded.get("requestId")})


pub.subscribe(on_receive, "meshtastic.receive")
iface = meshtastic.tcp_interface.TCPInterface(hostname=host, portNumber=port)
sent = []
for n in range(count):
    delay = start + n * every - time.time()
    if delay > 0:
        time.sleep(delay)
    packet = iface.sendText(f"{label} {n}")
    sent.append(packet.id)
# Answers to the last text may still be on their way.
time.sleep(2)
connected = iface.isConnected.is_set()
iface.close()
print(json.dumps({"sent": sent, "errors": errors, "connected": connected}))
sys.exit(0 if connected else 1)
