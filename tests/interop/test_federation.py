"""Federation against real upstream MCP servers, started by the tests:

- `@modelcontextprotocol/server-everything` behind cellgate over stdio and over
  Streamable HTTP: the official conformance suite passes through cellgate every
  scenario it passes against server-everything directly (same test, both runs).
- server-memory, server-filesystem and mcp-server-time together behind one
  cellgate (namespace `always`): the Python SDK sees the union with prefixes
  and calls a tool of each.
- Bad input: a command that does not exist next to a healthy upstream, and
  duplicate upstream names at `cellgate config check`.

The suite only speaks HTTP, so "directly" is always server-everything's own
Streamable HTTP transport; the stdio case compares the same server code
reached over stdio by cellgate. server-everything lacks the suite's `test_*`
tools; two scenarios "pass" against it only because its SDK answers the
missing tool with an `isError` result (see passes_only_by_lacking_the_tool),
and those are the only ones allowed to differ.
"""

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import NODE_BIN, Server, cellgate_bin, free_port, node_env
from test_conformance import STABLE, run_suite

NPM = NODE_BIN.parent
NODE = str(NODE_BIN / "node")
EVERYTHING = NPM / "@modelcontextprotocol/server-everything/dist/index.js"
MEMORY = NPM / "@modelcontextprotocol/server-memory/dist/index.js"
FILESYSTEM = NPM / "@modelcontextprotocol/server-filesystem/dist/index.js"
TIME = Path(sys.executable).parent / "mcp-server-time"


class EverythingHttp:
    """`server-everything streamableHttp` on a free loopback port."""

    def __init__(self):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cellgate-everything-"))
        self.log = open(self.dir / "everything.log", "w+")
        env = node_env() | {"PORT": str(self.port)}
        self.proc = subprocess.Popen([NODE, str(EVERYTHING), "streamableHttp"], env=env, cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "listening on port" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server-everything did not start:\n{self.output()}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def passing(scenarios: dict) -> set[str]:
    return {name for name, (_, f) in scenarios.items() if not f}


def suite_checks(output_dir: Path) -> dict[str, list[dict]]:
    """The checks of each scenario, from the suite's `-o DIR` results."""
    out = {}
    for path in output_dir.glob("server-*/checks.json"):
        scenario = re.match(r"server-(.+)-\d{4}-\d\d-\d\dT", path.parent.name).group(1)
        out[scenario] = json.loads(path.read_text())
    return out


def passes_only_by_lacking_the_tool(checks: list[dict]) -> bool:
    """server-everything does not implement the suite's `test_*` tools; its
    SDK answers a call to a missing tool with an `isError` result ("Tool X
    not found"), which suite 0.1.16 counts as a pass for tools-call-simple-text
    and tools-call-error. cellgate answers an unknown tool with JSON-RPC
    -32602, as the specification says for unknown tools, so those passes
    cannot carry over; every other pass must."""
    passed = [c for c in checks if c["status"] == "SUCCESS"]
    texts = [item.get("text", "") for c in passed
             for item in c.get("details", {}).get("result", {}).get("content", [])]
    return bool(passed) and all(c.get("details", {}).get("result", {}).get("isError") for c in passed) \
        and bool(texts) and all(re.fullmatch(r"MCP error -32602: Tool \S+ not found", t) for t in texts)


def admin_tool(gateway: Server, tool: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{gateway.base}/api/v1/tools/{tool}", data=json.dumps(body or {}).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_everything_conformance_through_the_gateway_matches_direct(transport):
    everything = EverythingHttp()
    if transport == "stdio":
        upstream = f"""
type = "stdio"
command = "{NODE}"
args = ["{EVERYTHING}", "stdio"]
"""
    else:
        upstream = f"""
type = "http"
url = "{everything.url}"
"""
    config = f"""
[federation]
namespace = "conditional"

[[upstreams]]
name = "everything"
[upstreams.transport]
{upstream}
"""
    results = Path(tempfile.mkdtemp(prefix="cellgate-everything-results-"))
    gateway = None
    try:
        gateway = Server(config=config)
        direct_out, direct, _ = run_suite(STABLE, everything.url, "-o", str(results / "direct"))
        through_out, through, _ = run_suite(STABLE, gateway.url, "-o", str(results / "through"))
        direct_checks = suite_checks(results / "direct")
        through_checks = suite_checks(results / "through")
        vacuous = {n for n in passing(direct) if passes_only_by_lacking_the_tool(direct_checks.get(n, []))}
        lost = passing(direct) - passing(through)
        report = (f"\npassing directly: {sorted(passing(direct))}"
                  f"\n  of which only because the tool is missing: {sorted(vacuous)}"
                  f"\npassing through cellgate: {sorted(passing(through))}"
                  f"\nlost through cellgate: {sorted(lost)}"
                  f"\n--- checks of the lost scenarios through cellgate ---\n"
                  + json.dumps({n: through_checks.get(n) for n in sorted(lost)}, indent=1)[-6000:]
                  + f"\n--- gateway log ---\n{gateway.output()[-3000:]}")
        # A baseline that passes nothing would make the comparison vacuous.
        assert {"server-initialize", "tools-list", "ping", "resources-list", "prompts-list"} <= passing(direct), \
            f"server-everything itself fails the basics:\n{direct_out[-4000:]}"
        assert len(direct_checks) == len(direct) and len(through_checks) == len(through), (results, direct_out)
        assert not lost - vacuous, report
        # Where a vacuous pass is lost, it is lost to cellgate's own answer
        # for a tool nobody offers, and to nothing else.
        for name in lost:
            errors = [c.get("errorMessage", "") for c in through_checks[name] if c["status"] == "FAILURE"]
            assert errors and all("MCP error -32602: unknown tool: test_" in e for e in errors), report
        status = admin_tool(gateway, "list_upstreams")["structuredContent"]["upstreams"]
        assert [u["name"] for u in status] == ["everything"] and status[0]["tools"] > 5, status
    finally:
        if gateway:
            gateway.stop()
        everything.stop()
        shutil.rmtree(results, ignore_errors=True)


def test_memory_filesystem_and_time_behind_one_gateway():
    from mcp import Client, StdioServerParameters, types

    root = Path(tempfile.mkdtemp(prefix="cellgate-fs-upstream-"))
    (root / "files").mkdir()
    (root / "files/hello.txt").write_text("hello from the filesystem upstream\n")
    config = f"""
[federation]
namespace = "always"

[[upstreams]]
name = "memory"
[upstreams.transport]
type = "stdio"
command = "{NODE}"
args = ["{MEMORY}"]
env = {{ MEMORY_FILE_PATH = "{root / 'memory.jsonl'}" }}

[[upstreams]]
name = "fs"
[upstreams.transport]
type = "stdio"
command = "{NODE}"
args = ["{FILESYSTEM}", "{root / 'files'}"]

[[upstreams]]
name = "time"
[upstreams.transport]
type = "stdio"
command = "{TIME}"
"""

    def text(result) -> str:
        return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))

    upstreams = {
        "memory": StdioServerParameters(command=NODE, args=[str(MEMORY)],
                                        env={"MEMORY_FILE_PATH": str(root / "direct-memory.jsonl")}),
        "fs": StdioServerParameters(command=NODE, args=[str(FILESYSTEM), str(root / "files")]),
        "time": StdioServerParameters(command=str(TIME)),
    }

    async def direct_tools() -> set[str]:
        union = set()
        for name, params in upstreams.items():
            async with Client(params, mode="legacy", read_timeout_seconds=30) as client:
                union |= {f"{name}__{t.name}" for t in (await client.list_tools()).tools}
        return union

    async def go():
        async with Client(gateway.url, mode="legacy", read_timeout_seconds=30) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            entity = {"name": "cellgate", "entityType": "project", "observations": ["federates MCP servers"]}
            created = await client.call_tool("memory__create_entities", {"entities": [entity]})
            graph = await client.call_tool("memory__read_graph", {})
            listing = await client.call_tool("fs__list_directory", {"path": str(root / "files")})
            content = await client.call_tool("fs__read_text_file", {"path": str(root / "files/hello.txt")})
            now = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        return names, created, graph, listing, content, now

    gateway = Server(config=config)
    try:
        expected = asyncio.run(direct_tools())
        names, created, graph, listing, content, now = asyncio.run(go())
        # cellgate's own tools (admin, memory, tasks) are served too, unprefixed.
        federated = {n for n in names if "__" in n}
        assert federated == expected, (f"missing: {sorted(expected - federated)}; "
                                       f"unexpected: {sorted(federated - expected)}")
        assert {"memory__create_entities", "fs__list_directory", "fs__read_text_file",
                "time__get_current_time"} <= federated, sorted(federated)
        for result in (created, graph, listing, content, now):
            assert not result.is_error, result
        assert "cellgate" in text(graph) and "federates MCP servers" in text(graph), text(graph)
        assert "hello.txt" in text(listing), text(listing)
        assert text(content) == "hello from the filesystem upstream\n", text(content)
        assert json.loads(text(now))["timezone"] == "UTC", text(now)
        # The memory server wrote where it was told, not into node_modules.
        assert "cellgate" in (root / "memory.jsonl").read_text()
    finally:
        gateway.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_missing_command_fails_only_its_upstream():
    from mcp import Client

    missing = "/nonexistent/cellgate-test/no-such-mcp-server"
    config = f"""
[federation]
namespace = "always"

[[upstreams]]
name = "ghost"
timeout_secs = 2
[upstreams.transport]
type = "stdio"
command = "{missing}"

[[upstreams]]
name = "time"
[upstreams.transport]
type = "stdio"
command = "{TIME}"
"""

    async def go():
        async with Client(gateway.url, mode="legacy", read_timeout_seconds=30) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            ok = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            try:
                broken = await client.call_tool("ghost__anything", {})
            except Exception as e:  # a JSON-RPC error is as good as an isError result
                broken = e
        return names, ok, broken

    gateway = Server(config=config)
    try:
        names, ok, broken = asyncio.run(go())
        assert "time__get_current_time" in names and not any(n.startswith("ghost__") for n in names), names
        assert not ok.is_error, ok
        status = {u["name"]: u for u in admin_tool(gateway, "list_upstreams")["structuredContent"]["upstreams"]}
        assert set(status) == {"ghost", "time"}, status
        assert status["time"]["state"] == "up" and status["time"]["tools"] >= 2, status["time"]
        assert status["ghost"]["state"] in ("restarting", "down") and status["ghost"]["tools"] == 0, status["ghost"]
        assert "no-such-mcp-server" in (status["ghost"]["last_error"] or ""), status["ghost"]
        message = str(broken) if isinstance(broken, Exception) else str(broken.content)
        assert isinstance(broken, Exception) or broken.is_error, broken
        # The tool name itself contains "ghost": the error must name the
        # upstream as such (and so say it is down), not just echo the name
        # back as an unknown tool.
        assert "upstream `ghost`" in message, message
    finally:
        gateway.stop()


@pytest.mark.parametrize("second", ["clock", "Clock"])
def test_config_check_names_both_duplicate_upstreams(tmp_path, second):
    config = tmp_path / "cellgate.toml"
    config.write_text(f"""[[upstreams]]
name = "clock"
[upstreams.transport]
type = "stdio"
command = "{TIME}"

[[upstreams]]
name = "{second}"
[upstreams.transport]
type = "http"
url = "http://127.0.0.1:9/mcp"
""")
    proc = subprocess.run([cellgate_bin(), "config", "check", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    # Both entries are named: the second by its key and line, the first by
    # its index and name.
    assert "line 8" in out and "upstreams[1].name" in out and f'"{second}"' in out, out
    assert 'upstreams[0] ("clock")' in out, out
    # The same file is refused by `serve`, before anything starts.
    serve = subprocess.run([cellgate_bin(), "serve", "--listen", f"127.0.0.1:{free_port()}",
                            "--data-dir", str(tmp_path / "data"), "--config", str(config)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert serve.returncode != 0 and "upstreams[1].name" in serve.stdout + serve.stderr, serve
