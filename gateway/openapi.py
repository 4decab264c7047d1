"""The API's OpenAPI document and its human docs page, both served by the gateway.

* ``GET /api/openapi.json``: ``gateway/openapi.yaml`` (the one copy of the spec, kept in
  the repository beside the routes it describes), read once and served as JSON, each
  operation's ``security`` set for the gateway's ``AUTH_MODE`` (:func:`served_spec`).
* ``GET /api/docs``: a Swagger UI page on that document.
* ``GET /api/docs/<filename>``: Swagger UI's scripts, styles and icons. They come from the
  ``swagger-ui-bundle`` package (pinned in requirements.lock), never from a CDN: the docs
  work on a machine without internet. Only the files of that distribution are served, by
  exact name (no path is ever joined from the request, so no traversal is possible).

The page uses relative URLs (``docs/swagger-ui.css``, ``openapi.json``), so it also works
behind a proxy that mounts the API under a prefix.
"""

import copy
import functools
import json
import os

import yaml
from swagger_ui_bundle import swagger_ui_path
from werkzeug.wrappers import Response

from common.errors import NotFound

SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.yaml")

# Content type of each kind of file of the Swagger UI distribution that is served.
ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".map": "application/json; charset=utf-8",
}
# Files of the distribution not served: its own demo pages, whose initializer points to
# the petstore example on the internet (the page below has its own).
EXCLUDED_ASSETS = {"index.html", "index.j2", "oauth2-redirect.html", "swagger-initializer.js"}
ASSET_CACHE_CONTROL = "public, max-age=86400"

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>shop API</title>
  <link rel="stylesheet" type="text/css" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
  <style>body { margin: 0; background: #fafafa; }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js" charset="utf-8"></script>
  <script src="docs/swagger-ui-standalone-preset.js" charset="utf-8"></script>
  <script>
    window.onload = function () {
      window.ui = SwaggerUIBundle({
        url: "openapi.json",
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
        plugins: [SwaggerUIBundle.plugins.DownloadUrl],
        layout: "StandaloneLayout"
      });
    };
  </script>
</body>
</html>
"""


@functools.cache
def spec():
    """The OpenAPI document as a dict (read once per process), as written: each
    operation's ``security`` is the one ``AUTH_MODE=jwt`` enforces, and ``x-auth-rule``
    names its rule in gateway/authz.py's ``RULES``."""
    with open(SPEC_PATH, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def operations(document):
    """``(method, path, operation)`` of every operation of ``document``."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                yield method, path, operation


BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


@functools.cache
def served_spec(mode, signup_is_admins=False):
    """The document a gateway in ``AUTH_MODE`` ``mode`` serves: what a client must send
    there. ``off``: no operation needs a token; ``tokens``: every POST does; ``jwt``: as
    written, the sign-up needing one too when it is the admin's."""
    document = copy.deepcopy(spec())
    for method, _, operation in operations(document):
        if mode == "off":
            operation["security"] = []
        elif mode == "tokens":
            operation["security"] = BEARER if method == "post" else []
        elif signup_is_admins and operation["x-auth-rule"] == "signup":
            operation["security"] = BEARER
    return document


@functools.cache
def spec_json(mode, signup_is_admins=False):
    document = served_spec(mode, signup_is_admins)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@functools.cache
def assets():
    """``{filename: (path, content type)}`` of every servable Swagger UI file."""
    found = {}
    for entry in swagger_ui_path.iterdir():
        content_type = ASSET_TYPES.get(os.path.splitext(entry.name)[1])
        if content_type and entry.is_file() and entry.name not in EXCLUDED_ASSETS:
            found[entry.name] = (entry, content_type)
    return found


def spec_response(mode, signup_is_admins=False):
    return Response(spec_json(mode, signup_is_admins), 200, mimetype="application/json")


def docs_response():
    return Response(DOCS_PAGE, 200, content_type="text/html; charset=utf-8")


def asset_response(filename):
    """The Swagger UI file named ``filename``; 404 (JSON envelope) for any other name."""
    asset = assets().get(filename)
    if asset is None:
        raise NotFound(f"no docs asset named {filename[:100]!r}", {"filename": filename[:100]})
    path, content_type = asset
    return Response(
        path.read_bytes(),
        200,
        content_type=content_type,
        headers={"Cache-Control": ASSET_CACHE_CONTROL},
    )
