"""json-tools: a component cell in Python (world cellgate:cell/tool).

Built with componentize-py and `--stub-wasi`: the component imports no WASI
interface at all, so its manifest grants nothing.
"""

import json

import wit_world
from componentize_py_types import Err


def flatten(value, prefix="", out=None):
    """{"a": {"b": 1}, "c": [2]} -> {"a.b": 1, "c.0": 2}"""
    if out is None:
        out = {}
    if isinstance(value, dict) and value:
        for key, item in value.items():
            flatten(item, f"{prefix}{key}.", out)
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            flatten(item, f"{prefix}{index}.", out)
    else:
        out[prefix[:-1]] = value
    return out


def pick(document, paths):
    """The values at dotted paths; a missing path is an error."""
    out = {}
    for path in paths:
        node = document
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise Err(f"path `{path}` not found")
        out[path] = node
    return out


class WitWorld(wit_world.WitWorld):
    def call(self, name: str, args: str) -> str:
        arguments = json.loads(args)
        if name == "flatten":
            if "document" not in arguments:
                raise Err("missing argument `document`")
            return json.dumps({"flat": flatten(arguments["document"])})
        if name == "pick":
            paths = arguments.get("paths")
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise Err("`paths` must be a list of strings")
            return json.dumps({"values": pick(arguments.get("document"), paths)})
        raise Err(f"unknown tool `{name}`")
