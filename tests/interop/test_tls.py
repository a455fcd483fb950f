"""HTTPS with rustls when a certificate is configured: the MCP endpoint and
health checks answer over TLS with a certificate the test made, and plain
HTTP on the same port gets nowhere."""

import http.client
import json
import urllib.error
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from conftest import Server


def test_https_with_a_configured_certificate():
    d = Path(tempfile.mkdtemp(prefix="cellgate-tls-"))
    try:
        cert, key = d / "cert.pem", d / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )
        ctx = ssl.create_default_context(cafile=str(cert))
        server = Server("--demo", config=f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n', tls_context=ctx)
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/healthz", context=ctx, timeout=10) as r:
                assert r.status == 200
                assert r.headers["x-content-type-options"] == "nosniff"
            req = urllib.request.Request(
                f"https://127.0.0.1:{server.port}/mcp",
                data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "tls", "version": "1"}}}).encode(),
                headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
            )
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                assert json.loads(r.read())["result"]["protocolVersion"] == "2025-11-25"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
                raise AssertionError("plain HTTP must not be served on the TLS port")
            except (OSError, urllib.error.URLError, http.client.HTTPException):
                pass
            assert "listening on https://" in server.output()
        finally:
            server.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
