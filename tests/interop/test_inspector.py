"""The MCP Inspector's CLI (npm @modelcontextprotocol/inspector --cli) lists
and calls tools of cellgate over Streamable HTTP and stdio."""

import json
import subprocess

import pytest

from conftest import NODE_BIN, cellgate_bin, node_env


def inspector(*args: str) -> dict:
    proc = subprocess.run(
        [str(NODE_BIN / "mcp-inspector"), "--cli", *args],
        capture_output=True, text=True, timeout=120, env=node_env(),
    )
    assert proc.returncode == 0, f"inspector failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    # The stdio server's own log lines go to stderr; stdout is the JSON answer.
    return json.loads(proc.stdout)


def targets(server, data_dir) -> dict[str, list[str]]:
    return {
        "http": [server.url],
        "stdio": [cellgate_bin(), "stdio", "--demo", "--data-dir", str(data_dir)],
    }


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_list_and_call(demo_server, data_dir, transport):
    target = targets(demo_server, data_dir)[transport]
    listed = inspector(*target, "--method", "tools/list")
    names = {t["name"] for t in listed["tools"]}
    assert "test_simple_text" in names and "test_image_content" in names, names

    called = inspector(*target, "--method", "tools/call", "--tool-name", "test_simple_text")
    assert called["content"] == [{"type": "text", "text": "This is a simple text response for testing."}]

    prompt = inspector(*target, "--method", "prompts/get", "--prompt-name", "test_prompt_with_arguments",
                       "--prompt-args", "arg1=one", "arg2=two")
    assert "one" in json.dumps(prompt) and "two" in json.dumps(prompt)
