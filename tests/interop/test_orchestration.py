"""Crash safety of the task queue and the workflow engine, with the real
binary: `kill -9` cellgate while tasks and a workflow run, start it again on
the same data directory, and check that every task completes once, an
idempotency key never makes a second task, and the workflow resumes from
its last checkpoint instead of starting over."""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import Server

FIXTURE = Path(__file__).resolve().parents[2] / "crates/cellgate-federation/tests/fixtures/fake_server.py"
CONFIG = f"""
[[upstreams]]
name = "fake"
timeout_secs = 30
[upstreams.transport]
type = "stdio"
command = "{sys.executable}"
args = ["{FIXTURE}"]

[orchestration]
visibility_timeout_secs = 6
heartbeat_secs = 2
"""

WORKFLOW = {
    "name": "crash-test",
    "phases": [
        {"id": "before", "strategy": "SEQUENTIAL", "steps": [
            {"id": "mark", "tool": "store_memory",
             "arguments": {"key": "wf-before", "value": "{{input.label}}", "category": "crash"}}]},
        {"id": "slow", "strategy": "SEQUENTIAL", "steps": [
            {"id": "wait", "tool": "fake__sleep", "arguments": {"secs": 3}}]},
        {"id": "after", "strategy": "SEQUENTIAL", "steps": [
            {"id": "mark_after", "tool": "store_memory",
             "arguments": {"key": "wf-after", "value": "{{input.label}}", "category": "crash"}}]},
    ],
}


def call(server, tool, body):
    req = urllib.request.Request(f"{server.base}/api/v1/tools/{tool}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            out = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{tool}: HTTP {e.code}: {e.read()[:500]}")
    assert not out.get("isError"), f"{tool}: {out}"
    return out["structuredContent"]


def wait_for(predicate, what, timeout=90):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(last)[:2000]}")


def test_kill_9_mid_work_then_restart_finishes_everything_once(data_dir):
    server = Server(config=CONFIG, data_dir=data_dir)
    keys = [f"job-{i}" for i in range(12)]
    try:
        ids = {}
        for k in keys:
            task = call(server, "submit_task", {"tool": "fake__sleep", "arguments": {"secs": 2},
                                                "idempotency_key": k, "max_retries": 3})["task"]
            ids[k] = task["id"]
        run = call(server, "create_workflow", {"definition": WORKFLOW, "input": {"label": "v1"},
                                               "execute": True})
        wf = run["id"]
        # Wait until the workflow is inside its slow phase and tasks run.
        wait_for(lambda: (lambda v: (any(h.get("event") == "phase_completed" and h.get("phase") == "before"
                                         for h in v["history"]), v))(call(server, "get_workflow", {"id": wf})),
                 "the first phase to complete")
        running = {t["id"] for t in call(server, "list_tasks", {"status": "running"})["tasks"]}
        assert running, "some tasks should be running when cellgate is killed"
    finally:
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        # Stop the orphaned upstream child too (it had its own process).
        server.stop()

    server = Server(config=CONFIG, data_dir=data_dir)
    try:
        def all_done():
            tasks = call(server, "list_tasks", {"limit": 1000})["tasks"]
            done = [t for t in tasks if t["status"] == "succeeded"]
            return len(done) == len(keys), tasks
        tasks = wait_for(all_done, "every task to succeed after the restart")
        assert len(tasks) == len(keys), "a task appeared twice"
        assert {t["id"] for t in tasks} == set(ids.values())
        # Those the kill interrupted ran again and succeeded, once each.
        by_id = {t["id"]: t for t in tasks}
        assert all(by_id[i]["status"] == "succeeded" and by_id[i]["result"] for i in running), running
        # Submitting again with a used key returns the same task, not a new one.
        again = call(server, "submit_task", {"tool": "fake__sleep", "arguments": {"secs": 2},
                                             "idempotency_key": keys[0]})["task"]
        assert again["id"] == ids[keys[0]]
        assert len(call(server, "list_tasks", {"limit": 1000})["tasks"]) == len(keys)

        view = wait_for(lambda: (lambda v: (v["status"] == "succeeded", v))(
            call(server, "get_workflow", {"id": wf})), "the workflow to finish after the restart")
        completed = [h["phase"] for h in view["history"] if h.get("event") == "phase_completed"]
        # Resumed from the checkpoint: the first phase is not run again.
        assert completed == ["before", "slow", "after"], view["history"]
        before = call(server, "retrieve_memory", {"key": "wf-before"})["memories"][0]
        assert before["version"] == 1, before
        assert call(server, "retrieve_memory", {"key": "wf-after"})["memories"][0]["value"] == "v1"
    finally:
        server.stop()


def test_two_cellgate_processes_share_one_postgres_queue(tmp_path):
    """Two `cellgate serve` processes on one PostgreSQL database, both with
    workers: tasks submitted to either are each run once (a second run would
    bump the memory's version) and none is lost."""
    admin_url = os.environ.get("CELLGATE_TEST_POSTGRES_URL")
    if not admin_url:
        if os.environ.get("CELLGATE_REQUIRE_POSTGRES") == "1":
            raise AssertionError("CELLGATE_REQUIRE_POSTGRES=1 but CELLGATE_TEST_POSTGRES_URL is not set")
        import pytest
        pytest.skip("CELLGATE_TEST_POSTGRES_URL is not set (run under scripts/with-postgres)")
    import uuid
    db = f"q_{uuid.uuid4().hex}"
    psql = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))[-1]
    import subprocess
    subprocess.run([str(psql), admin_url, "-qc", f"CREATE DATABASE {db}"], check=True, timeout=60)
    url = admin_url.rsplit("/", 1)[0] + f"/{db}"
    config = f"""
[store]
backend = "postgres"
url = "{url}"

[orchestration]
queues = {{ default = 8 }}
"""
    servers = [Server(config=config, data_dir=tmp_path / f"node{i}") for i in range(2)]
    try:
        n = 120
        for i in range(n):
            call(servers[i % 2], "submit_task", {
                "tool": "store_memory",
                "arguments": {"key": f"shared-{i}", "value": "done", "category": "queue"},
                "idempotency_key": f"shared-{i}"})

        def all_done():
            tasks = call(servers[0], "list_tasks", {"limit": 1000})["tasks"]
            return len(tasks) == n and all(t["status"] == "succeeded" for t in tasks), tasks
        wait_for(all_done, "every task to succeed")
        for i in range(n):
            memory = call(servers[1], "retrieve_memory", {"key": f"shared-{i}"})["memories"]
            assert len(memory) == 1 and memory[0]["version"] == 1, (i, memory)
    finally:
        for s in servers:
            s.stop()
        subprocess.run([str(psql), admin_url, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], timeout=60)


def test_a_waiting_submitter_hears_the_tasks_progress(data_dir):
    """submit_task with wait=true answers when the task has ended and relays
    the tool's progress reports as notifications/progress meanwhile."""
    import asyncio

    from mcp import Client

    server = Server("--demo", data_dir=data_dir)
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    async def go():
        async with Client(server.url, mode="legacy", read_timeout_seconds=60) as client:
            return await client.call_tool("submit_task", {"tool": "test_tool_with_progress", "arguments": {},
                                                          "wait": True}, progress_callback=on_progress)

    try:
        result = asyncio.run(go())
    finally:
        server.stop()
    assert not result.is_error, result
    assert result.structured_content["task"]["status"] == "succeeded", result.structured_content
    assert seen, "no progress was relayed"
    assert [p for p, _ in seen] == sorted(p for p, _ in seen), seen
