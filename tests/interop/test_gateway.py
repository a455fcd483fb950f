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
