"""Where the shop replaces or reaches into nameko 2.14.1's internals, a canary per place:
if upstream code changes (a nameko upgrade, a patched copy), these fail and name our copy
to re-check. Each entry says what we replaced and why; the hash is of the upstream
function's source as of nameko 2.14.1 (the version requirements.lock pins)."""

import hashlib
import inspect
from importlib import import_module
from importlib.metadata import version

import pytest
from nameko.rpc import ReplyListener

# upstream function -> (sha256 prefix of its source in 2.14.1, our code, why ours exists)
REPLACED = {
    "nameko.web.server.WebServer.start": (
        "486138c90b8e9be2",
        "gateway/http.py JsonWebServer.start",
        "the listen backlog is fixed at eventlet's 50 upstream; ours reads WEB_LISTEN_BACKLOG, "
        "and listens on every address of WEB_SERVER_ADDRESS (upstream: one)",
    ),
    "nameko.web.server.WebServer.run": (
        "f54a220ccb817633",
        "gateway/http.py JsonWebServer.accept_from",
        "upstream's accept loop reads the one socket; ours runs once per listening socket",
    ),
    "nameko.web.server.WsgiApp.__call__": (
        "2909d54e61f1f9a0",
        "gateway/http.py JsonWsgiApp.__call__",
        "upstream answers routing errors with werkzeug's HTML; ours with the JSON envelope",
    ),
    "nameko.rpc.Responder.send_response": (
        "d5c3234c5e408a01",
        "common/rpc.py Responder.send_response",
        "replies transient (still confirmed), the result encoded once",
    ),
    "nameko.rpc.ReplyListener.handle_message": (
        "c10e21f1b3ea8be0",
        "common/rpc.py ReplyListener.handle_message",
        "a reply is not acked (its consumer takes it with no_ack)",
    ),
    "nameko.messaging.QueueConsumer.get_consumers": (
        "9566ed8719e2f073",
        "common/rpc.py ReplyConsumer.get_consumers",
        "the reply queue consumed with no_ack, its replies handled inline, not spawned",
    ),
    "nameko.rpc.RpcConsumer.handle_result": (
        "25b95fd9dfce82c2",
        "common/rpc.py RpcConsumer.handle_result",
        "builds our Responder (upstream names its own class inline)",
    ),
    "nameko.rpc.ReplyListener.get_reply_event": (
        "8425b219b2c284e0",
        "common/rpc.py BoundedMethodProxy._forget_when_published",
        "a timed-out call's reply slot is dropped from ReplyListener._reply_events",
    ),
    "nameko.events.EventDispatcher.get_dependency": (
        "faa2c2f1b14af11a",
        "common/tracing.py TracedEventDispatcher.get_dependency",
        "events carry the dispatching worker's span (headers computed before it exists)",
    ),
    "nameko.dependency_providers.Config.get_dependency": (
        "701bed4b689900e2",
        "common/settings.py Config",
        "upstream copies the config for every worker; ours shares one read-only view",
    ),
}


def upstream(path):
    module_path, cls_name, attribute = path.rsplit(".", 2)
    return getattr(getattr(import_module(module_path), cls_name), attribute)


def test_nameko_is_the_version_the_copies_were_made_from():
    assert version("nameko") == "2.14.1", (
        "nameko changed: re-check every entry of REPLACED in this file"
    )


@pytest.mark.parametrize("path", sorted(REPLACED))
def test_upstream_code_we_replaced_is_unchanged(path):
    expected, ours, why = REPLACED[path]
    source = inspect.getsource(upstream(path))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == expected, (
        f"{path} changed upstream: re-check {ours} ({why}), then update the hash"
    )


def test_pending_replies_are_kept_by_correlation_id():
    """What _forget_when_published relies on: ReplyListener._reply_events maps a call's
    correlation id to the event its reply is sent to."""
    listener = ReplyListener()
    event = listener.get_reply_event("correlation-1")
    assert listener._reply_events == {"correlation-1": event}
