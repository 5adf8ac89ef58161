"""A small gateway bot on the Python meshtastic library: connects, sends a text message and
waits for the mesh's answer. Exit 0 when the answer came. Used by tests/interop.rs."""
import sys
import time

import meshtastic.tcp_interface
from pubsub import pub

host, port = sys.argv[1], int(sys.argv[2])
received = []


def on_text(packet, interface):
    received.append(packet.get("decoded", {}).get("text", ""))


pub.subscribe(on_text, "meshtastic.receive.text")
iface = meshtastic.tcp_interface.TCPInterface(hostname=host, portNumber=port)
nodes = len(iface.nodes or {})
iface.sendText("hello from the bot")
expected = "echo: hello from the bot"
deadline = time.time() + 30
while time.time() < deadline and expected not in received:
    time.sleep(0.1)
# Stay a moment longer, so that the other client's session overlaps this one.
time.sleep(2)
connected = iface.isConnected.is_set()
iface.close()
print(f"nodes={nodes} connected={connected} received={received}")
sys.exit(0 if expected in received and connected else 1)
