"""The official MCP conformance suite against `cellgate serve --demo`.

0.1.16 is the stable release (2025-11-25 scenarios); the 0.2.0 alpha adds
frozen requirement sets per spec revision (`--requirements REV`).
"""

import re
import subprocess

import pytest

from conftest import NODE_BIN, node_env

STABLE = [str(NODE_BIN / "conformance")]
NEXT = [str(NODE_BIN / "node"), str(NODE_BIN.parent / "conformance-next/dist/index.js")]


def run_suite(cmd: list[str], url: str, *args: str, timeout: int = 900) -> tuple[str, dict[str, tuple[int, int]], tuple[int, int]]:
    proc = subprocess.run(
        cmd + ["server", "--url", url, *args],
        capture_output=True, text=True, timeout=timeout, env=node_env(),
    )
    out = proc.stdout + proc.stderr
    scenarios = {
        m.group(2): (int(m.group(3)), int(m.group(4)))
        for m in re.finditer(r"^([✓✗]) (\S+): (\d+) passed, (\d+) failed", out, re.M)
    }
    total = re.search(r"^Total: (\d+) passed, (\d+) failed", out, re.M)
    assert total, f"no summary in the suite's output:\n{out[-4000:]}"
    return out, scenarios, (int(total.group(1)), int(total.group(2)))


def failed(scenarios: dict) -> list[str]:
    return [name for name, (_, f) in scenarios.items() if f]


def test_stable_active_suite_passes_completely(demo_server):
    out, scenarios, total = run_suite(STABLE, demo_server.url)
    assert not failed(scenarios), f"failed: {failed(scenarios)}\n{out[-4000:]}"
    assert len(scenarios) == 30, sorted(scenarios)
    assert total == (40, 0), out[-3000:]


def test_stable_pending_scenarios_pass(demo_server):
    out, scenarios, total = run_suite(STABLE, demo_server.url, "--suite", "pending")
    assert set(scenarios) == {"json-schema-2020-12", "server-sse-polling"}, scenarios
    assert not failed(scenarios), out[-4000:]
    assert total[1] == 0


@pytest.mark.parametrize("revision", ["2025-11-25", "2026-07-28"])
def test_requirement_set_passes(demo_server, revision):
    out, scenarios, total = run_suite(NEXT, demo_server.url, "--requirements", revision)
    assert not failed(scenarios), f"failed: {failed(scenarios)}\n{out[-4000:]}"
    assert total[1] == 0 and total[0] > 0
