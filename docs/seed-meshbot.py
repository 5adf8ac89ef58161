"""Writes a meshbot SQLite database with 10 000 generated nodes and keys, for `keysync import
meshbot`: the store the memory and overhead measurements run with.

    python3 docs/seed-meshbot.py OUT.db
"""
import random
import sqlite3
import sys

random.seed(7)
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE meshtastic_nodes (node_id TEXT PRIMARY KEY, name TEXT, shortName TEXT,"
           " hwModel INTEGER, publicKey BLOB)")
for i in range(10000):
    db.execute("INSERT INTO meshtastic_nodes VALUES (?, ?, ?, 9, ?)",
               ("!%08x" % (0x10000000 + i * 7919), "Node %05d Ridge Relay" % i, "N%03d" % (i % 1000),
                bytes(random.getrandbits(8) for _ in range(32))))
db.commit()
