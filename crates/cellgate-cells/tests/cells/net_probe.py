"""A component written for the network tests: `run` opens a TCP connection
to {"host", "port"}, sends one line and returns the reply.

It connects by address (`socket.connect` parses a dotted quad itself):
`create_connection` would go through getaddrinfo, i.e. the
ip-name-lookup interface, which cellgate offers only to cells granted a
host by name."""

import json
import socket

import wit_world
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def call(self, name: str, args: str) -> str:
        arguments = json.loads(args)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.connect((arguments["host"], arguments["port"]))
                s.sendall(b"ping\n")
                reply = s.recv(64)
        except OSError as e:
            raise Err(f"connect failed: {e}")
        return json.dumps({"reply": reply.decode()})
