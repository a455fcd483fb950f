"""cellgate as a gateway in front of `cellgate stdio --demo` (namespace mode
`conditional`, so one upstream keeps its names): the official conformance
suite must see exactly what it sees against the demo server directly.
This proves sampling, elicitation, progress, logging and subscriptions
survive the hop."""

import json
import tempfile
import urllib.request
from pathlib import Path

from conftest import Server, cellgate_bin
from test_conformance import STABLE, failed, run_suite


def test_conformance_through_the_gateway_matches_direct(demo_server):
    child_dir = Path(tempfile.mkdtemp(prefix="cellgate-upstream-"))
    # The child runs in its own empty directory: it must not read the
    # gateway's cellgate.toml (which names the child: a loop).
    config = f"""
[federation]
namespace = "conditional"

[[upstreams]]
name = "demo"
[upstreams.transport]
type = "stdio"
command = "{cellgate_bin()}"
args = ["stdio", "--demo", "--data-dir", "{child_dir / 'data'}"]
cwd = "{child_dir}"
"""
    gateway = Server(config=config)
    try:
        direct_out, direct, direct_total = run_suite(STABLE, demo_server.url)
        out, through, total = run_suite(STABLE, gateway.url)
        assert not failed(through), f"failed through the gateway: {failed(through)}\n{out[-3000:]}"
        assert through.keys() == direct.keys()
        assert total == direct_total == (40, 0), (total, direct_total)
        # The operator sees the upstream through the admin tools (REST here).
        req = urllib.request.Request(f"{gateway.base}/api/v1/tools/list_upstreams", data=b"{}",
                                     headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            status = json.loads(r.read())["structuredContent"]["upstreams"]
        assert [u["name"] for u in status] == ["demo"] and status[0]["tools"] > 10, status
        assert status[0]["blocked_tools"] == []
    finally:
        gateway.stop()


def test_virtual_server_serves_only_its_subset():
    """A `[[servers]]` entry at /servers/{name}/mcp: the Python SDK sees the
    selected tools, prompts and resources only, and what is outside the
    subset looks exactly like what does not exist. /mcp still serves all."""
    import asyncio

    import pytest
    from mcp import Client

    config = """
[demo]
enabled = true

[[servers]]
name = "text-only"
description = "Only the text tools of the demo."
tools.include = ["test_*text*", "test_simple_*"]
tools.exclude = ["test_simple_image"]
resources.include = ["test://static-*"]
"""
    gateway = Server(config=config)

    async def go():
        async with Client(f"{gateway.base}/servers/text-only/mcp", mode="legacy") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            prompts = (await client.list_prompts()).prompts
            resources = {r.uri for r in (await client.list_resources()).resources}
            ok = await client.call_tool("test_simple_text", {})
            with pytest.raises(Exception) as hidden:
                await client.call_tool("test_image_content", {})
            with pytest.raises(Exception) as absent:
                await client.call_tool("no_such_tool", {})
            with pytest.raises(Exception) as no_prompt:
                await client.get_prompt("test_simple_prompt", {})
        async with Client(gateway.url, mode="legacy") as client:
            everything = {t.name for t in (await client.list_tools()).tools}
        return tools, prompts, resources, ok, hidden, absent, no_prompt, everything

    try:
        tools, prompts, resources, ok, hidden, absent, no_prompt, everything = asyncio.run(go())
        assert "test_simple_text" in tools and tools <= everything, tools
        assert all(("text" in t or t.startswith("test_simple_")) and t != "test_simple_image" for t in tools), tools
        assert "test_image_content" not in tools and "test_image_content" in everything
        assert prompts == []
        assert resources and all(str(u).startswith("test://static-") for u in resources), resources
        assert not ok.is_error
        assert "unknown tool: test_image_content" in str(hidden.value)
        assert str(hidden.value).replace("test_image_content", "X") == str(absent.value).replace("no_such_tool", "X")
        assert "unknown prompt" in str(no_prompt.value)
    finally:
        gateway.stop()


def test_hot_reload_adds_and_removes_upstreams_without_dropping_sessions():
    """Editing cellgate.toml while serving starts a new upstream and stops a
    removed one; a session opened before the edit keeps working; a broken
    edit is refused and the running configuration stays; SIGHUP reloads."""
    import os
    import signal
    import sys
    import time as clock

    from mcp import Client

    time_server = str(Path(sys.executable).parent / "mcp-server-time")
    base = '[federation]\nnamespace = "always"\n'
    with_time = base + f"""
[[upstreams]]
name = "clock"
[upstreams.transport]
type = "stdio"
command = "{time_server}"
"""
    gateway = Server(config=base)
    path = gateway.dir / "cellgate.toml"

    import asyncio

    seen = []

    async def on_message(message):
        method = getattr(getattr(message, "root", message), "method", None)
        if method:
            seen.append(method)

    async def scenario():
        async with Client(gateway.url, mode="legacy", message_handler=on_message) as client:
            before = {t.name for t in (await client.list_tools()).tools}
            assert not any(n.startswith("clock__") for n in before), before
            path.write_text(with_time)
            deadline = clock.monotonic() + 30
            names = before
            while clock.monotonic() < deadline and "clock__get_current_time" not in names:
                await asyncio.sleep(0.2)
                names = {t.name for t in (await client.list_tools()).tools}
            assert "clock__get_current_time" in names, gateway.output()[-2000:]
            # Connected clients hear of it (listChanged end to end).
            deadline = clock.monotonic() + 10
            while clock.monotonic() < deadline and "notifications/tools/list_changed" not in seen:
                await asyncio.sleep(0.1)
            assert "notifications/tools/list_changed" in seen, seen
            # The same session, opened before the reload, calls the new tool.
            r = await client.call_tool("clock__get_current_time", {"timezone": "UTC"})
            assert not r.is_error, r
            # A broken file is refused as a whole; the upstream keeps serving.
            path.write_text(with_time + "\n[[upstreams]]\nname = \"clock\"\n")
            await asyncio.sleep(2.5)
            assert "reload refused" in gateway.output(), gateway.output()[-2000:]
            r = await client.call_tool("clock__get_current_time", {"timezone": "UTC"})
            assert not r.is_error, r
            # Removing the upstream removes its tools.
            path.write_text(base)
            deadline = clock.monotonic() + 30
            while clock.monotonic() < deadline and "clock__get_current_time" in names:
                await asyncio.sleep(0.2)
                names = {t.name for t in (await client.list_tools()).tools}
            assert "clock__get_current_time" not in names
            os.kill(gateway.proc.pid, signal.SIGHUP)
            deadline = clock.monotonic() + 10
            while clock.monotonic() < deadline and "SIGHUP" not in gateway.output():
                await asyncio.sleep(0.1)
            assert "SIGHUP" in gateway.output()
            await client.list_tools()

    try:
        asyncio.run(scenario())
    finally:
        gateway.stop()


def test_upstreams_added_at_run_time_persist_sealed_and_can_be_removed(data_dir):
    """add_upstream over REST starts an upstream at once; it survives a
    restart; its credentials are not readable in the database; bad entries
    and names declared in the file are refused with the reason."""
    import sys

    time_server = str(Path(sys.executable).parent / "mcp-server-time")
    file_config = f"""
[[upstreams]]
name = "declared"
[upstreams.transport]
type = "stdio"
command = "{time_server}"
"""

    def rest(gateway, tool, body):
        req = urllib.request.Request(f"{gateway.base}/api/v1/tools/{tool}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def tool_names(gateway):
        status, body = rest(gateway, "list_upstreams", {})
        assert status == 200, body
        return {u["name"]: u for u in body["structuredContent"]["upstreams"]}

    secret = "Bearer s3cret-token-for-the-test"
    entry = {"name": "clock", "transport": {"type": "stdio", "command": time_server,
                                            "env": {"CLOCK_TOKEN": secret}}}
    gateway = Server(config=file_config, data_dir=data_dir)
    try:
        status, body = rest(gateway, "add_upstream", {"upstream": entry})
        assert status == 200 and not body.get("isError"), body
        assert "clock" in tool_names(gateway)
        status, body = rest(gateway, "add_upstream", {"upstream": entry})
        assert body.get("isError") and "replace=true" in json.dumps(body), body
        status, body = rest(gateway, "add_upstream", {"upstream": {**entry, "name": "declared"}})
        assert body.get("isError") and "cellgate.toml" in json.dumps(body), body
        status, body = rest(gateway, "add_upstream", {"upstream": {"name": "x", "transport": {"type": "carrier-pigeon"}}})
        assert body.get("isError") and "upstream.transport" in json.dumps(body), body
        assert "x" not in tool_names(gateway)
    finally:
        gateway.stop()
    # The token is sealed: no database file holds it in clear.
    for f in data_dir.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f"{f} holds the credential in clear"
    gateway = Server(config=file_config, data_dir=data_dir)
    try:
        upstreams = tool_names(gateway)
        assert {"declared", "clock"} <= set(upstreams), upstreams
        status, body = rest(gateway, "remove_upstream", {"name": "declared"})
        assert body.get("isError") and "remove it there" in json.dumps(body), body
        status, body = rest(gateway, "remove_upstream", {"name": "clock"})
        assert status == 200 and not body.get("isError"), body
        assert "clock" not in tool_names(gateway)
    finally:
        gateway.stop()


def test_pins_cli_approves_a_changed_tool_on_the_running_instance():
    """A tool whose description changes (a rug pull) is held back; `cellgate
    pins list` shows it and `cellgate pins approve` releases it, talking to
    the running instance."""
    import subprocess
    import sys

    fixture = Path(__file__).resolve().parents[2] / "crates/cellgate-federation/tests/fixtures/fake_server.py"
    config = f"""
[[upstreams]]
name = "fake"
[upstreams.transport]
type = "stdio"
command = "{sys.executable}"
args = ["{fixture}"]
"""
    gateway = Server(config=config)

    def call(tool, body=None):
        req = urllib.request.Request(f"{gateway.base}/api/v1/tools/{tool}", data=json.dumps(body or {}).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def pins(*args):
        return subprocess.run([cellgate_bin(), "pins", *args, "--url", gateway.base],
                              capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})

    try:
        status, body = call("fake__fetch")
        assert status == 200 and not body.get("isError"), body
        assert json.loads(pins("list").stdout) == []
        status, body = call("fake__mutate")
        assert status == 200, body
        # The upstream announces list_changed; the gateway re-lists, compares
        # with the pin and holds the tool back.
        import time
        deadline = time.monotonic() + 20
        pending = []
        while time.monotonic() < deadline and not pending:
            listed = pins("list")
            assert listed.returncode == 0, listed.stderr
            pending = json.loads(listed.stdout)
            time.sleep(0.2)
        status, body = call("fake__fetch")
        assert status != 200 or body.get("isError"), f"a changed definition must be held back: {body}"
        assert [(p["upstream"], p["tool"]) for p in pending] == [("fake", "fetch")], pending
        refused = pins("approve", "fake", "no_such_tool")
        assert refused.returncode != 0 and "no_such_tool" in refused.stderr, refused
        approved = pins("approve", "fake", "fetch")
        assert approved.returncode == 0, approved.stderr
        status, body = call("fake__fetch")
        assert status == 200 and not body.get("isError"), body
        assert json.loads(pins("list").stdout) == []
    finally:
        gateway.stop()
