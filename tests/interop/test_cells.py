"""The README's "write your first cell" walkthrough, as a user would do it:
compile a C cell with clang for wasm32-wasi, put its digest in the manifest,
make a publisher key, trust it, sign, install with the CLI, then call the
tool through `cellgate serve` with the official Python SDK."""

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mcp import Client

from conftest import Server, cellgate_bin

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, cwd):
    return subprocess.run([cellgate_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_first_cell_from_c_source_to_the_python_sdk(tmp_path, data_dir):
    if shutil.which("clang") is None:
        if os.environ.get("CELLGATE_REQUIRE_INTEROP") == "1":
            pytest.fail("clang is required (scripts/tools installs clang lld wasi-libc)")
        pytest.skip("clang is not installed")
    for f in ("main.c", "manifest.json"):
        shutil.copy(ROOT / "cells/text-stats" / f, tmp_path / f)
    subprocess.run(["clang", "--target=wasm32-wasi", "-O2", "-o", "text-stats.wasm", "main.c"],
                   cwd=tmp_path, check=True, timeout=120)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["module"]["sha256"] = hashlib.sha256((tmp_path / "text-stats.wasm").read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest, indent=2))

    d = ["--data-dir", str(data_dir)]
    # Unsigned is refused, with the reason.
    unsigned = cli("cell", "install", "manifest.json", "text-stats.wasm", *d, cwd=tmp_path)
    assert unsigned.returncode != 0 and "sign" in unsigned.stderr.lower(), unsigned.stderr
    assert cli("cell", "keygen", "--out", "me.key.json", cwd=tmp_path).returncode == 0
    assert cli("cell", "trust", "me", "me.key.json", *d, cwd=tmp_path).returncode == 0
    signed = cli("cell", "sign", "manifest.json", "text-stats.wasm", "--key", "me.key.json", cwd=tmp_path)
    assert signed.returncode == 0, signed.stderr
    # A module that is not the signed one is refused.
    (tmp_path / "other.wasm").write_bytes((tmp_path / "text-stats.wasm").read_bytes() + b"\0")
    tampered = cli("cell", "install", "manifest.json", "other.wasm", "--signature", "manifest.sig.json", *d, cwd=tmp_path)
    assert tampered.returncode != 0 and "digest" in tampered.stderr.lower(), tampered.stderr
    installed = cli("cell", "install", "manifest.json", "text-stats.wasm", "--signature", "manifest.sig.json", *d,
                    cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout)["state"] == "ACTIVE"

    server = Server(data_dir=data_dir)
    try:
        async def go():
            async with Client(server.url, mode="legacy") as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert "text-stats__stats" in names, names
                result = await client.call_tool("text-stats__stats", {"text": "one two\nthree"})
                assert not result.is_error, result
                assert result.structured_content == {"chars": 13, "words": 3, "lines": 2}
                # The manifest's input schema is enforced before the cell runs.
                with pytest.raises(Exception) as bad:
                    await client.call_tool("text-stats__stats", {"text": 42})
                assert "/text" in str(bad.value)
        asyncio.run(go())
    finally:
        server.stop()
    listed = json.loads(cli("cell", "list", *d, cwd=tmp_path).stdout)
    assert "text-stats" in json.dumps(listed)
    assert cli("cell", "suspend", "text-stats", *d, cwd=tmp_path).returncode == 0
    run = cli("cell", "run", "text-stats", "stats", "text=x", *d, cwd=tmp_path)
    assert run.returncode != 0, run.stdout
