"""The trust pipeline end to end against a real `cellgate serve` with
authentication required: tokens and API keys from the CLI, the Python SDK
carrying them, and an adversarial catalog that tries to read, list, call or
infer another tenant's data through every entry point, expecting zero leaks.

Tenants: `acme` and `beta`, each with an admin and a developer; the operator
tenant is `local`.
"""

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

from conftest import Server, cellgate_bin, free_port

PROTOCOL = "2025-11-25"


class Instance:
    """A data directory, a config with auth required, and a server on it."""

    def __init__(self):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cellgate-trust-"))
        self.config = self.dir / "cellgate.toml"
        self.config.write_text(
            f"""
data_dir = "{self.dir / 'data'}"
[server]
listen = "127.0.0.1:{self.port}"
[auth]
required = true
[rate_limit.plans.default]
tenant_per_second = 0
principal_per_second = 0
[rate_limit.plans.tiny]
tenant_per_second = 1
tenant_burst = 3
principal_per_second = 0
"""
        )
        for name in ["Acme", "Beta"]:
            self.cli("tenant", "create", name)
        self.tokens = {
            who: self.token(tenant, role, who)
            for who, tenant, role in [
                ("acme-admin", "acme", "admin"),
                ("acme-dev", "acme", "developer"),
                ("beta-admin", "beta", "admin"),
                ("beta-dev", "beta", "developer"),
                ("op", "local", "admin"),
            ]
        }
        self.beta_key = self.cli("key", "create", "--tenant", "beta", "--role", "developer", "--principal", "beta-bot")
        self.server = None

    def cli(self, *args: str) -> str:
        proc = subprocess.run(
            [cellgate_bin(), *args, "--config", str(self.config)],
            capture_output=True, text=True, timeout=60, env={"CELLGATE_LOG": "warn", "PATH": "/usr/bin:/bin"},
        )
        assert proc.returncode == 0, f"cellgate {' '.join(args)} failed:\n{proc.stderr}"
        return proc.stdout.strip()

    def token(self, tenant: str, role: str, principal: str) -> str:
        return self.cli("token", "issue", "--tenant", tenant, "--role", role, "--principal", principal, "--ttl", "1h")

    def start(self):
        self.server = Server("--demo", config=self.config.read_text(), port=self.port, data_dir=self.dir / "data")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self):
        if self.server:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def inst():
    i = Instance()
    i.start()
    yield i
    i.stop()


def http(inst, method: str, path: str, body=None, headers=None, token=None):
    h = {"content-type": "application/json", "accept": "application/json, text/event-stream",
         "mcp-protocol-version": PROTOCOL}
    if token:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{inst.port}{path}", data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def session(inst, who: str, token: str | None = None) -> str:
    token = token or inst.tokens[who]
    status, headers, body = http(inst, "POST", "/mcp", {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "trust", "version": "1"}}},
        token=token)
    assert status == 200, body
    sid = {k.lower(): v for k, v in headers.items()}["mcp-session-id"]
    http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"},
         headers={"mcp-session-id": sid}, token=token)
    return sid


def rpc(inst, who: str, method: str, params: dict, sid: str | None = None, token: str | None = None):
    sid = sid or session(inst, who, token)
    status, _, body = http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
                           headers={"mcp-session-id": sid}, token=token or inst.tokens[who])
    return status, json.loads(body) if body.startswith("{") else body


def tool(inst, who: str, name: str, args: dict | None = None, token: str | None = None):
    return rpc(inst, who, "tools/call", {"name": name, "arguments": args or {}}, token=token)


def denied(answer) -> bool:
    """A refusal: a JSON-RPC error or a tool error, with nothing of the other tenant."""
    status, body = answer
    if isinstance(body, str):
        return status in (401, 403, 404)
    return "error" in body or body.get("result", {}).get("isError") is True


def text_of(answer) -> str:
    return json.dumps(answer[1])


# ---- authentication --------------------------------------------------------

def test_no_credential_is_401_with_resource_metadata(inst):
    status, headers, body = http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status == 401, body
    www = {k.lower(): v for k, v in headers.items()}["www-authenticate"]
    assert www.startswith("Bearer ") and "resource_metadata=" in www, www


def test_bad_token_is_401_invalid_token(inst):
    forged = inst.tokens["acme-admin"][:-4] + "AAAA"
    status, headers, _ = http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=forged)
    assert status == 401
    assert 'error="invalid_token"' in {k.lower(): v for k, v in headers.items()}["www-authenticate"]


def test_refused_requests_are_audited_without_the_credential(inst):
    forged = inst.tokens["beta-dev"][:-4] + "AAAA"
    status, _, _ = http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=forged)
    assert status == 401
    # They never reach the pipeline: the HTTP layer records them under the
    # operator tenant, with the reason and no credential.
    deadline = time.time() + 10
    while True:
        out = inst.cli("audit", "export", "--tenant", "local")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        refused = [r for r in rows if r["method"] == "http" and r.get("error_code") == 401
                   and any(d["layer"] == "authenticate" and d["verdict"] == "deny" for d in r["decisions"])]
        if refused or time.time() > deadline:
            break
        time.sleep(0.2)
    assert refused, json.dumps(rows[-3:])
    assert refused[-1]["target"] == "/mcp" and refused[-1]["principal"]["id"] == "anonymous", refused[-1]
    assert forged not in out and forged[:40] not in out


def test_token_in_query_is_refused(inst):
    status, _, _ = http(inst, "POST", f"/mcp?access_token={inst.tokens['acme-admin']}",
                        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert status in (400, 401)


def test_protected_resource_metadata(inst):
    status, _, body = http(inst, "GET", "/.well-known/oauth-protected-resource")
    assert status == 200
    meta = json.loads(body)
    assert meta["resource"] == inst.url


def test_security_headers(inst):
    _, headers, _ = http(inst, "GET", "/healthz")
    h = {k.lower(): v for k, v in headers.items()}
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"


def test_python_sdk_carries_tokens_in_both_modes(inst):
    async def go(mode: str, who: str):
        client_http = create_mcp_http_client(headers={"Authorization": f"Bearer {inst.tokens[who]}"})
        async with Client(streamable_http_client(inst.url, http_client=client_http), mode=mode) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("test_simple_text", {})
            return tools, result.content[0].text

    for mode in ["auto", "legacy"]:
        tools, text = asyncio.run(go(mode, "acme-dev"))
        assert "test_simple_text" in tools
        assert "create_tenant" not in tools, "developers do not see admin tools"
        assert text == "This is a simple text response for testing."
        admin_tools, _ = asyncio.run(go(mode, "acme-admin"))
        assert "list_tenants" in admin_tools


def test_api_key_authenticates_as_its_tenant(inst):
    status, body = tool(inst, "beta-dev", "test_simple_text", token=inst.beta_key)
    assert status == 200 and "result" in body, body
    # A session opened with the key belongs to the key's principal only.
    sid = session(inst, "beta-dev", inst.beta_key)
    assert rpc(inst, "beta-dev", "tools/list", {}, sid=sid)[0] == 404


# ---- the cross-tenant catalog ----------------------------------------------

CROSS_TENANT_TOOLS = [
    ("get_tenant", {}),
    ("list_tenant_users", {}),
    ("add_tenant_user", {"principal": "mallory", "roles": ["admin"]}),
    ("remove_tenant_user", {"principal": "beta-admin"}),
    ("create_api_key", {"principal": "mallory", "roles": ["developer"]}),
    ("list_api_keys", {}),
    ("revoke_api_key", {"id": "anything"}),
    ("create_role", {"name": "root", "level": 1, "permissions": ["read"]}),
    ("list_roles", {}),
    ("set_permission_rule", {"id": "r", "pattern": "*", "deny": True}),
    ("delete_permission_rule", {"id": "r"}),
    ("list_permission_rules", {}),
    ("check_tenant_permission", {"tool": "echo", "roles": ["admin"]}),
    ("suspend_tenant", {}),
    ("resume_tenant", {}),
    ("delete_tenant", {"confirm": "beta"}),
    ("set_tenant_plan", {"plan": "tiny"}),
]


@pytest.mark.parametrize("name,args", CROSS_TENANT_TOOLS, ids=[n for n, _ in CROSS_TENANT_TOOLS])
def test_tenant_admin_cannot_touch_another_tenant(inst, name, args):
    answer = tool(inst, "acme-admin", name, {"tenant": "beta", **args})
    assert denied(answer), answer
    assert "beta-admin" not in text_of(answer) and "beta-bot" not in text_of(answer)
    # A tenant that does not exist gets the same answer: no existence oracle.
    ghost = tool(inst, "acme-admin", name, {"tenant": "ghost", **args})
    assert denied(ghost)
    assert answer[1].get("error", {}).get("code") == ghost[1].get("error", {}).get("code")


def test_list_tenants_shows_only_ones_own(inst):
    status, body = tool(inst, "acme-admin", "list_tenants")
    ids = [t["id"] for t in body["result"]["structuredContent"]["tenants"]]
    assert ids == ["acme"], ids
    _, body = tool(inst, "beta-dev", "list_tenants", token=inst.beta_key)
    assert "error" in body, "developers may not list tenants at all"


def test_tenant_admin_cannot_create_tenants(inst):
    assert denied(tool(inst, "acme-admin", "create_tenant", {"id": "evil"}))


def test_developer_cannot_escalate(inst):
    assert denied(tool(inst, "acme-dev", "add_tenant_user", {"principal": "acme-dev", "roles": ["admin"]}))
    assert denied(tool(inst, "acme-dev", "create_api_key", {"principal": "x", "roles": ["admin"]}))


def test_admin_cannot_grant_above_a_role_it_lacks(inst):
    # acme-admin holds `admin` (level 50); a tenant role above that cannot be created.
    assert denied(tool(inst, "acme-admin", "create_role", {"name": "god", "level": 99, "permissions": ["read"]}))


def test_revoking_a_foreign_key_id_from_ones_own_tenant_does_nothing(inst):
    key_id = inst.beta_key.split("_")[1]
    answer = tool(inst, "acme-admin", "revoke_api_key", {"id": key_id})
    assert denied(answer), answer
    status, body = tool(inst, "beta-dev", "test_simple_text", token=inst.beta_key)
    assert status == 200 and "result" in body, "beta's key still works"


def test_sessions_cannot_be_used_by_another_tenant(inst):
    sid = session(inst, "acme-dev")
    for intruder in ["beta-dev", "beta-admin"]:
        status, _ = rpc(inst, intruder, "tools/list", {}, sid=sid)
        assert status == 404
        status, _, _ = http(inst, "GET", "/mcp", headers={"accept": "text/event-stream", "mcp-session-id": sid},
                            token=inst.tokens[intruder])
        assert status == 404
        status, _, _ = http(inst, "DELETE", "/mcp", headers={"mcp-session-id": sid}, token=inst.tokens[intruder])
        assert status == 404
    status, body = rpc(inst, "acme-dev", "tools/list", {}, sid=sid)
    assert status == 200, "the owner's session survived"


def test_a_tenants_rules_do_not_reach_another(inst):
    answer = tool(inst, "beta-admin", "set_permission_rule",
                  {"id": "no-simple-text", "pattern": "test_simple_text", "deny": True})
    assert not denied(answer), answer
    assert denied(tool(inst, "beta-dev", "test_simple_text"))
    assert not denied(tool(inst, "acme-dev", "test_simple_text"))
    tool(inst, "beta-admin", "delete_permission_rule", {"id": "no-simple-text"})


def test_disabling_a_member_in_one_tenant_leaves_the_same_name_elsewhere(inst):
    assert not denied(tool(inst, "beta-admin", "add_tenant_user", {"principal": "acme-dev", "disabled": True}))
    assert not denied(tool(inst, "acme-dev", "test_simple_text"))
    tool(inst, "beta-admin", "remove_tenant_user", {"principal": "acme-dev"})


def test_stateless_requests_are_scoped_too(inst):
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    status, _, body = http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                 "params": {"name": "list_tenants", "arguments": {}, "_meta": meta}},
                           headers={"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                                    "mcp-name": "list_tenants"},
                           token=inst.tokens["acme-admin"])
    assert status == 200, body
    ids = [t["id"] for t in json.loads(body)["result"]["structuredContent"]["tenants"]]
    assert ids == ["acme"]


def test_suspending_one_tenant_leaves_the_other(inst):
    assert not denied(tool(inst, "op", "suspend_tenant", {"tenant": "beta"}))
    try:
        answer = tool(inst, "beta-dev", "test_simple_text")
        assert denied(answer) and "suspended" in text_of(answer)
        assert not denied(tool(inst, "acme-dev", "test_simple_text"))
    finally:
        tool(inst, "op", "resume_tenant", {"tenant": "beta"})
    assert not denied(tool(inst, "beta-dev", "test_simple_text"))


def test_rate_limits_are_per_tenant_and_answer_429(inst):
    assert not denied(tool(inst, "op", "set_tenant_plan", {"tenant": "beta", "plan": "tiny"}))
    try:
        sid = session(inst, "beta-dev")
        statuses = [rpc(inst, "beta-dev", "tools/list", {}, sid=sid)[0] for _ in range(8)]
        assert 429 in statuses, statuses
        assert not denied(tool(inst, "acme-dev", "test_simple_text")), "acme is not limited by beta's plan"
    finally:
        tool(inst, "op", "set_tenant_plan", {"tenant": "beta", "plan": "default"})


def test_audit_records_each_tenant_separately_and_verifies(inst):
    tool(inst, "acme-dev", "test_simple_text")
    tool(inst, "op", "create_audit_log", {"category": "test", "message": "trust catalog ran"})
    status, body = tool(inst, "op", "verify_audit_chain")
    report = body["result"]["structuredContent"]
    assert report["first_problem"] is None and report["entries"] > 10, report
    assert denied(tool(inst, "acme-admin", "verify_audit_chain")), "instance-wide verification is the operator's"
    out = inst.cli("audit", "export", "--tenant", "beta")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert rows and all(r["tenant"] == "beta" for r in rows)
    denied_rows = [r for r in rows if any(d["verdict"] == "deny" for d in r["decisions"])]
    assert denied_rows, "refused calls are audited with their deny decision"


def test_revoked_and_foreign_keys_are_refused(inst):
    created = tool(inst, "acme-admin", "create_api_key", {"principal": "acme-bot", "roles": ["developer"]})
    key = created[1]["result"]["structuredContent"]["key"]
    assert not denied(tool(inst, "acme-dev", "test_simple_text", token=key))
    # The key's secret never appears in the audit export.
    assert key not in inst.cli("audit", "export", "--tenant", "acme")
    key_id = key.split("_")[1]
    assert not denied(tool(inst, "acme-admin", "revoke_api_key", {"id": key_id}))
    status, _, _ = http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=key)
    assert status == 401
    # A key with a valid id and a wrong secret is refused the same way.
    wrong = inst.beta_key[:-6] + "AAAAAA"
    status, _, _ = http(inst, "POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=wrong)
    assert status == 401


# ---- the REST API is the same pipeline ---------------------------------------

def rest(inst, method: str, path: str, who: str | None, body=None):
    token = inst.tokens[who] if who else None
    status, headers, text = http(inst, method, f"/api/v1{path}", body, token=token)
    return status, (json.loads(text) if text.startswith(("{", "[")) else text)


def test_rest_requires_authentication_and_scopes_tenants(inst):
    assert rest(inst, "GET", "/tools", None)[0] == 401
    status, body = rest(inst, "GET", "/tools", "acme-dev")
    assert status == 200 and "test_simple_text" in json.dumps(body)
    assert "create_tenant" not in json.dumps(body)
    status, body = rest(inst, "POST", "/tools/test_simple_text", "acme-dev", {})
    assert status == 200 and body["content"][0]["text"].startswith("This is a simple text")
    status, body = rest(inst, "GET", "/tenants", "acme-admin")
    assert status == 200 and [t["id"] for t in body["tenants"]] == ["acme"]
    for path in ["/tenants/beta", "/tenants/beta/users", "/tenants/beta/keys", "/tenants/beta/rules",
                 "/tenants/beta/roles"]:
        status, body = rest(inst, "GET", path, "acme-admin")
        assert status == 403, (path, status, body)
        assert "beta-" not in json.dumps(body)
    assert rest(inst, "POST", "/tenants", "acme-admin", {"id": "evil"})[0] == 403
    assert rest(inst, "DELETE", "/tenants/beta?confirm=beta", "acme-admin")[0] == 403
    assert rest(inst, "POST", "/tools/admin_nope", "acme-dev", [])[0] == 400, "a body that is not an object"
