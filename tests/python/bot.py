"""A small gateway bot on the Python meshtastic library (TCPInterface and pubsub), as operators
write them: it connects, says "ready", sends a text and waits for the mesh's echo of it; it also
answers each text a node on the mesh sends ("hello ...") with a direct message back to that node,
"bot got: <text>". Ends once the echo came and ANSWERS texts (default 0) were answered, or after
60 s; prints what it saw, one line a fact. Exit 0 when all that was expected came.
Used by tests/interop.rs."""
import sys
import time

import meshtastic.tcp_interface
from pubsub import pub

host, port = sys.argv[1], int(sys.argv[2])
answers_wanted = int(sys.argv[3]) if len(sys.argv) > 3 else 0
received = []
answered = []


def on_text(packet, interface):
    text = packet.get("decoded", {}).get("text", "")
    sender = packet.get("from")
    received.append(text)
    print(f"heard {sender:#010x}: {text}", flush=True)
    # Echoes of what was sent (the bot's own, or another client's) are not questions.
    if text.startswith("hello") and sender not in (0, interface.myInfo.my_node_num):
        reply = f"bot got: {text}"
        interface.sendText(reply, destinationId=sender)
        answered.append(sender)
        print(f"answered {sender:#010x}: {reply}", flush=True)


pub.subscribe(on_text, "meshtastic.receive.text")
iface = meshtastic.tcp_interface.TCPInterface(hostname=host, portNumber=port)
nodes = len(iface.nodes or {})
print(f"ready nodes={nodes}", flush=True)
iface.sendText("hello from the bot")
expected = "echo: hello from the bot"
deadline = time.time() + 60
while time.time() < deadline and (
    expected not in received or len(answered) < answers_wanted
):
    time.sleep(0.1)
# Stay a moment longer, so that the other client's session overlaps this one and the last
# answer leaves.
time.sleep(2)
connected = iface.isConnected.is_set()
iface.close()
print(f"nodes={nodes} connected={connected} answered={len(answered)} received={received}")
done = expected in received and len(answered) >= answers_wanted and connected
sys.exit(0 if done else 1)
