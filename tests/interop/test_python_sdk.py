"""The official MCP Python SDK (2.x) as a client of cellgate, over stdio and
Streamable HTTP, in `mode="auto"` (probes with server/discover, 2026-07-28
stateless) and `mode="legacy"` (initialize handshake)."""

import asyncio

import pytest
from mcp import Client, StdioServerParameters, types

from conftest import cellgate_bin


async def exercise(target, mode: str) -> dict:
    seen = {}
    async with Client(target, mode=mode, read_timeout_seconds=30) as client:
        tools = await client.list_tools()
        names = {t.name for t in tools.tools}
        assert {"test_simple_text", "test_image_content"} <= names, names
        seen["tools"] = len(names)

        result = await client.call_tool("test_simple_text", {})
        assert not result.is_error
        text = [c.text for c in result.content if isinstance(c, types.TextContent)]
        assert text == ["This is a simple text response for testing."], text

        resource = await client.read_resource("test://static-text")
        contents = resource.contents[0]
        assert contents.uri == "test://static-text"
        assert "static" in contents.text.lower()

        templated = await client.read_resource("test://template/42/data")
        assert "42" in templated.contents[0].text

        prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "alpha", "arg2": "beta"})
        rendered = prompt.messages[0].content.text
        assert "alpha" in rendered and "beta" in rendered, rendered
    return seen


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_streamable_http(demo_server, mode):
    seen = asyncio.run(exercise(demo_server.url, mode))
    assert seen["tools"] >= 10


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_stdio(data_dir, mode):
    params = StdioServerParameters(command=cellgate_bin(), args=["stdio", "--demo", "--data-dir", str(data_dir)])
    seen = asyncio.run(exercise(params, mode))
    assert seen["tools"] >= 10


def test_unknown_tool_is_a_protocol_error(demo_server):
    async def go():
        async with Client(demo_server.url, mode="legacy") as client:
            with pytest.raises(Exception) as err:
                await client.call_tool("no_such_tool", {})
            return str(err.value)

    message = asyncio.run(go())
    assert "no_such_tool" in message
