"""A small MCP server on stdio (JSON-RPC lines, no dependencies) for engine-mcp's tests.

Tools: `whoami` (the MCP_USER of its environment), `wait` (never answers; a cancellation of
it is appended to the file named by MCP_CANCEL_LOG), `crash` (exits mid-call), `fail`
(answers isError), `grow` (adds the tool `extra` and sends notifications/tools/list_changed).
"""
import json
import os
import sys

TOOLS = [
    {"name": "whoami", "description": "The user this process was started for.",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "wait", "description": "Never answers (until cancelled).",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "crash", "description": "Exits mid-call.",
     "inputSchema": {"type": "object", "properties": {}}},
    {"name": "fail", "description": "Reports an error.",
     "inputSchema": {"type": "object", "properties": {"why": {"type": "string"}}}},
    {"name": "grow", "description": "Adds the tool `extra`.",
     "inputSchema": {"type": "object", "properties": {}}},
]


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def text(rid, t, error=False):
    send({"jsonrpc": "2.0", "id": rid,
          "result": {"content": [{"type": "text", "text": t}], "isError": error}})


for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {"listChanged": True}},
            "serverInfo": {"name": "identity", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        name = params.get("name")
        if name == "whoami":
            text(rid, os.environ.get("MCP_USER", ""))
        elif name == "wait":
            pass
        elif name == "crash":
            os._exit(3)
        elif name == "fail":
            text(rid, "failed because " + str((params.get("arguments") or {}).get("why")), True)
        elif name == "grow":
            if not any(t["name"] == "extra" for t in TOOLS):
                TOOLS.append({"name": "extra", "description": "Added at run time.",
                              "inputSchema": {"type": "object", "properties": {}}})
            text(rid, "grown")
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        else:
            send({"jsonrpc": "2.0", "id": rid,
                  "error": {"code": -32602, "message": "unknown tool " + str(name)}})
    elif method == "notifications/cancelled":
        log = os.environ.get("MCP_CANCEL_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps(params.get("requestId")) + "\n")
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
    elif rid is not None and method is not None:
        send({"jsonrpc": "2.0", "id": rid,
              "error": {"code": -32601, "message": "no method " + method}})
