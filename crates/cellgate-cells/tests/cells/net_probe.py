"""A component written for the network tests: `connect` opens a TCP
connection to {"host", "port"}, sends one line and returns the reply."""

import json
import socket

import wit_world
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def call(self, name: str, args: str) -> str:
        arguments = json.loads(args)
        try:
            with socket.create_connection((arguments["host"], arguments["port"])) as s:
                s.sendall(b"ping\n")
                reply = s.recv(64)
        except OSError as e:
            raise Err(f"connect failed: {e}")
        return json.dumps({"reply": reply.decode()})
