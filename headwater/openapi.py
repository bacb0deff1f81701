"""OpenAPI 3.1 for every route, generated from the msgspec types the handlers decode and encode.

Each operation carries a `Doc`: its summary, parameters, request body and responses, given as
msgspec types (Structs, or annotated types such as `Annotated[int, Meta(ge=1)]`). The builder
walks the app's routes (Starlette's and the hot ASGI ones), finds each one's `Doc` by
(method, path), and produces one document whose component schemas all come from a single
`msgspec.json.schema_components` call over the types the docs name. A route without a `Doc`
is an error, so a new route cannot go undocumented.

`GET /openapi.json` serves the document (built once per app) and `GET /docs` a readable,
self-contained HTML page of it; neither needs a key.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from headwater.dialects.common import Spec
from headwater.errors import ErrorBody
from headwater.parsing import MAX_INT, MAX_TIME_LENGTH, MIN_INT

REF_TEMPLATE = "#/components/schemas/{name}"
JSON = "application/json"

Where = Literal["query", "path", "header"]

# Security requirement sets, by scheme name (see SECURITY_SCHEMES): any one of them will do.
KEY: tuple[str, ...] = ("bearerAuth", "apiKeyAuth")
WRITE_KEY: tuple[str, ...] = ("basicAuth", "bearerAuth", "apiKeyAuth")
NO_AUTH: tuple[str, ...] = ()

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "A Headwater key (`hw_live_...` or `hw_test_...`) as `Authorization: Bearer <key>`.",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A Headwater key in the `X-API-Key` header.",
    },
    "basicAuth": {
        "type": "http",
        "scheme": "basic",
        "description": "Segment's form: the key (the write key) as the Basic-auth username, any password.",
    },
}

# The standard errors an operation can answer with, as `Doc.errors` lists them.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is not valid: every problem is listed in `details`.",
    401: "Missing, unknown or revoked API key.",
    403: "The key's role lacks the permission, or `X-Tenant-Id` names another tenant than the key's.",
    404: "No such resource in the key's tenant and mode.",
    409: "The resource is not in a state that allows this.",
    413: "The body is over the byte limit (counted after gzip is undone) or carries too many events.",
    415: "A `Content-Encoding` other than gzip (or, where a content type matters, an unsupported one).",
    429: "Over the key's rate limit (in events): nothing was stored; retry after `Retry-After` seconds.",
    503: "The store cannot take the request now (the write queue is full, or the store is unavailable).",
    507: "The store's disk is full: nothing of the request was stored; it is taken again once there is room.",
}
RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
WWW_AUTHENTICATE = {"description": "The scheme to authenticate with.", "schema": {"type": "string"}}
ERROR_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {"WWW-Authenticate": {**WWW_AUTHENTICATE, "required": True}},
    503: {"Retry-After": {**RETRY_AFTER, "required": True}},
    429: {
        "Retry-After": {**RETRY_AFTER, "required": True},
        "RateLimit-Limit": {"description": "The burst: events at once.", "schema": {"type": "string"}},
        "RateLimit-Remaining": {"description": "Events the bucket holds now.", "schema": {"type": "string"}},
        "RateLimit-Reset": {"description": "Seconds until the bucket is full.", "schema": {"type": "string"}},
    },
    507: {"Retry-After": {**RETRY_AFTER, "required": True}},
}

# What an authenticated route can always answer, and what a route that reads a body adds.
AUTH_ERRORS = (400, 401, 403, 503)
BODY_ERRORS = (400, 413, 415)

TENANT_HEADER_DESCRIPTION = "Optional: the tenant the caller means. A key of another tenant is refused with 403."


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter; `type` is a msgspec type (its JSON Schema is the parameter's)."""

    name: str
    type: Any = str
    where: Where = "query"
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Body:
    """One request content type. `type` is a msgspec type; `schema` a raw JSON Schema for
    content msgspec does not describe (binary data)."""

    type: Any = None
    media_type: str = JSON
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Reply:
    """A response. `type` None means no body."""

    type: Any = None
    description: str = ""
    media_type: str = JSON
    headers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Doc:
    """The documentation of one operation.

    `responses` maps a status to a msgspec type (a JSON body), None (no body) or a `Reply`.
    `errors` lists the standard error statuses it can answer with (each an `ErrorBody`).
    `security` names the schemes any one of which authenticates it (`NO_AUTH`: none).
    """

    summary: str
    tags: tuple[str, ...]
    responses: Mapping[int, Any]
    description: str = ""
    params: tuple[Param, ...] = ()
    body: tuple[Body, ...] = ()
    body_description: str = ""
    errors: tuple[int, ...] = ()
    security: tuple[str, ...] = KEY
    operation_id: str | None = None


Operation = tuple[str, str, Doc]


def app_operations(routes: Iterable[BaseRoute], hot: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every (method, path) the app serves: Starlette's routes (HEAD aside) and the hot ones."""
    found: dict[tuple[str, str], None] = {}
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found[(method, route.path_format)] = None
    for key in hot:
        found[key] = None
    return list(found)


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return f"{method.lower()}_{words}" if words else method.lower()


class _Schemas:
    """Collects the msgspec types the docs name, then renders them all in one call."""

    def __init__(self) -> None:
        self.types: list[Any] = []
        self.index: dict[int, int] = {}

    def add(self, type_: Any) -> int:
        key = id(type_)
        if key not in self.index:
            self.index[key] = len(self.types)
            self.types.append(type_)
        return self.index[key]

    def render(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        schemas, components = msgspec.json.schema_components(self.types, ref_template=REF_TEMPLATE)
        return list(schemas), components


def build_document(
    operations: Sequence[Operation],
    *,
    title: str,
    version: str,
    description: str,
    extra_types: Iterable[Any] = (),
    refine: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations` (method, path, doc).

    `extra_types` are rendered into the components too (for raw schemas that `$ref` them);
    `refine` may then add to the components what their Structs cannot say.
    """
    registry = _Schemas()
    error_ref = registry.add(ErrorBody)
    for type_ in extra_types:
        registry.add(type_)
    pending: list[tuple[str, str, Doc, dict[str, Any]]] = []
    for method, path, doc in operations:
        pending.append((method, path, doc, _operation(method, path, doc, registry)))
    schemas, components = registry.render()
    if refine is not None:
        refine(components)

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"__type__"}:
                return schemas[node["__type__"]]
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    error_schema = schemas[error_ref]
    paths: dict[str, dict[str, Any]] = {}
    for method, path, doc, operation in pending:
        resolved = resolve(operation)
        for status in doc.errors:
            response: dict[str, Any] = {
                "description": ERROR_DESCRIPTIONS[status],
                "content": {JSON: {"schema": error_schema}},
            }
            if status in ERROR_HEADERS:
                response["headers"] = ERROR_HEADERS[status]
            resolved["responses"].setdefault(str(status), response)
        paths.setdefault(path, {})[method.lower()] = resolved
    tags = sorted({tag for _, _, doc in operations for tag in doc.tags})
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


def _placeholder(registry: _Schemas, type_: Any) -> dict[str, Any]:
    """Where the schema of `type_` goes once rendered; a tuple of types is any of them."""
    if isinstance(type_, tuple):
        return {"anyOf": [_placeholder(registry, t) for t in type_]}
    return {"__type__": registry.add(type_)}


def _operation(method: str, path: str, doc: Doc, registry: _Schemas) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": doc.operation_id or _operation_id(method, path),
        "summary": doc.summary,
        "tags": list(doc.tags),
    }
    if doc.description:
        operation["description"] = doc.description
    if parameters := _parameters(path, doc, registry):
        operation["parameters"] = parameters
    if doc.body:
        content = {
            body.media_type: {
                "schema": dict(body.schema) if body.schema is not None else _placeholder(registry, body.type)
            }
            for body in doc.body
        }
        request: dict[str, Any] = {"required": True, "content": content}
        if doc.body_description:
            request["description"] = doc.body_description
        operation["requestBody"] = request
    operation["responses"] = {str(status): _response(status, spec, registry) for status, spec in doc.responses.items()}
    operation["security"] = [{name: []} for name in doc.security]
    return operation


def _parameters(path: str, doc: Doc, registry: _Schemas) -> list[dict[str, Any]]:
    """The doc's parameters, plus the path's own (as plain strings) and, where a key is needed, X-Tenant-Id."""
    params = list(doc.params)
    named = {p.name for p in params if p.where == "path"}
    for name in re.findall(r"{([^}:]+)(?::[^}]*)?}", path):
        if name not in named:
            params.insert(0, Param(name, where="path", required=True))
    if doc.security:
        params.append(Param("X-Tenant-Id", where="header", description=TENANT_HEADER_DESCRIPTION))
    return [
        {
            "name": p.name,
            "in": p.where,
            "required": p.required or p.where == "path",
            **({"description": p.description} if p.description else {}),
            "schema": _placeholder(registry, p.type),
        }
        for p in params
    ]


def _response(status: int, spec: Any, registry: _Schemas) -> dict[str, Any]:
    reply = spec if isinstance(spec, Reply) else Reply(spec)
    response: dict[str, Any] = {"description": reply.description or HTTPStatus(status).phrase}
    if reply.schema is not None:
        response["content"] = {reply.media_type: {"schema": dict(reply.schema)}}
    elif reply.type is not None:
        response["content"] = {reply.media_type: {"schema": _placeholder(registry, reply.type)}}
    if reply.headers:
        response["headers"] = {name: dict(header) for name, header in reply.headers.items()}
    return response


def document_operations(
    keys: Iterable[tuple[str, str]], docs: Mapping[tuple[str, str], Doc]
) -> tuple[list[Operation], list[str]]:
    """Pair each (method, path) the app serves with its doc; also the ones that have none."""
    operations = []
    missing = []
    for method, path in keys:
        doc = docs.get((method, path))
        if doc is None:
            missing.append(f"{method} {path}")
        else:
            operations.append((method, path, doc))
    return operations, missing


# Types built from a dialect's field specs, so that its documentation is its validation.

TimeText = Annotated[str, msgspec.Meta(max_length=MAX_TIME_LENGTH, extra_json_schema={"format": "date-time"})]

# Client data (`data`, `payload`, `properties`, ...): any JSON whose numbers 64 bits hold, as
# ingest checks (a float literal such as 1e20 is taken as the float it is).
JSON_VALUE: dict[str, Any] = {
    "description": f"Any JSON value whose numbers fit in 64 bits: integers from {MIN_INT} to {MAX_INT}, finite floats.",
    "anyOf": [
        {"type": ["string", "boolean", "null"]},
        {"type": "integer", "minimum": MIN_INT, "maximum": MAX_INT},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}},
    ],
}
JSON_MEMBERS = {"additionalProperties": {"$ref": "#/components/schemas/JsonValue"}}
JsonObject = Annotated[dict[str, Any], msgspec.Meta(extra_json_schema=JSON_MEMBERS)]


def _spec_type(spec: Spec) -> Any:
    if spec.kind == "object":
        return JsonObject
    if spec.kind == "strings":
        return list[str]
    if spec.kind == "time":
        return TimeText
    if spec.choices:
        return Literal[spec.choices]
    if spec.min_length or spec.max_length is not None:
        return Annotated[str, msgspec.Meta(min_length=spec.min_length, max_length=spec.max_length)]
    return str


def struct_from_specs(name: str, specs: Sequence[Spec], doc: str) -> type[msgspec.Struct]:
    """A Struct with one field per spec: required ones first (and never null), optional ones
    nullable with a null default, unknown fields forbidden, as `check_fields` reads them."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for spec in specs:
        if spec.required:
            fields.append((spec.name, _spec_type(spec)))
    for spec in specs:
        if not spec.required:
            fields.append((spec.name, _spec_type(spec) | None, None))
    struct = msgspec.defstruct(name, fields, forbid_unknown_fields=True, module=__name__)
    struct.__doc__ = doc
    return struct


# The two routes that serve the document.


def routes(document: Callable[[], dict[str, Any]]) -> list[BaseRoute]:
    """`GET /openapi.json` and `GET /docs`; `document` is called once, on the first request."""
    cache: dict[str, bytes | str] = {}

    def rendered(kind: str) -> bytes | str:
        if kind not in cache:
            built = document()
            cache["json"] = msgspec.json.encode(built)
            cache["html"] = render_html(built)
        return cache[kind]

    async def openapi_json(request: Request) -> Response:
        return Response(rendered("json"), media_type=JSON)

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(rendered("html"))

    return [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs_page, methods=["GET"])]


# The readable page: server-rendered, no scripts, no external assets.

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
header{background:#1d3557;color:#fff;padding:1.2em 2em}header h1{margin:0}header p{margin:.3em 0 0;opacity:.85}
nav{padding:1em 2em;border-bottom:1px solid #dde}nav a{margin-right:1em}
main{padding:0 2em 3em;max-width:1100px}
section.op{background:#fff;border:1px solid #dde;border-radius:6px;margin:1em 0;padding:.8em 1.2em}
.method{display:inline-block;min-width:4.5em;text-align:center;font-weight:700;color:#fff;border-radius:4px;
padding:.1em .4em;margin-right:.6em}
.get{background:#2a9d8f}.post{background:#457b9d}.put{background:#e9a23b}.patch{background:#8d6cab}
.delete{background:#e63946}.options{background:#6c757d}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f3f4f7;padding:.6em;border-radius:4px;overflow-x:auto}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #dde;padding:.2em .6em;text-align:left;
vertical-align:top}
h2{margin-top:1.6em;border-bottom:2px solid #1d3557}h3{margin:.2em 0}.path{font-family:ui-monospace,monospace}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _schema_html(schema: Any) -> str:
    """A schema as indented JSON, with `$ref`s linking to the component's section."""
    text = _e(json.dumps(schema, indent=2, sort_keys=False))

    def link(match: re.Match[str]) -> str:
        name = match.group(1)
        return f'&quot;$ref&quot;: <a href="#schema-{name}">&quot;#/components/schemas/{name}&quot;</a>'

    return "<pre>" + re.sub(r"&quot;\$ref&quot;: &quot;#/components/schemas/([^&]+)&quot;", link, text) + "</pre>"


def _operation_html(method: str, path: str, op: Mapping[str, Any]) -> str:
    parts = [
        f'<section class="op" id="{_e(op["operationId"])}">',
        f'<h3><span class="method {method}">{method.upper()}</span><span class="path">{_e(path)}</span></h3>',
        f"<p><strong>{_e(op.get('summary', ''))}</strong></p>",
    ]
    if op.get("description"):
        parts.append(f"<p>{_e(op['description'])}</p>")
    security = [name for requirement in op.get("security", []) for name in requirement]
    parts.append(f"<p>Authentication: {_e(', '.join(security)) if security else 'none'}</p>")
    if op.get("parameters"):
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
            f"<td>{'yes' if p.get('required') else 'no'}</td><td><code>{_e(json.dumps(p['schema']))}</code></td>"
            f"<td>{_e(p.get('description', ''))}</td></tr>"
            for p in op["parameters"]
        )
        parts.append(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>required</th><th>schema</th>"
            f"<th>description</th></tr>{rows}</table>"
        )
    if "requestBody" in op:
        body = op["requestBody"]
        parts.append("<h4>Request body</h4>")
        if body.get("description"):
            parts.append(f"<p>{_e(body['description'])}</p>")
        for media, content in body["content"].items():
            parts.append(f"<p><code>{_e(media)}</code></p>{_schema_html(content['schema'])}")
    parts.append("<h4>Responses</h4>")
    for status, response in op["responses"].items():
        parts.append(f"<p><strong>{_e(status)}</strong> {_e(response['description'])}</p>")
        for name in response.get("headers", {}):
            parts.append(f"<p>Header <code>{_e(name)}</code></p>")
        for media, content in response.get("content", {}).items():
            parts.append(f"<p><code>{_e(media)}</code></p>{_schema_html(content['schema'])}")
    parts.append("</section>")
    return "".join(parts)


def render_html(document: Mapping[str, Any]) -> str:
    """Every operation, grouped by tag, then every component schema."""
    by_tag: dict[str, list[str]] = {}
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append(_operation_html(method, path, op))
    info = document["info"]
    body = [
        f"<header><h1>{_e(info['title'])} API {_e(info['version'])}</h1><p>{_e(info['description'])}</p>"
        '<p>Machine-readable: <a href="/openapi.json" style="color:#fff">/openapi.json</a> (OpenAPI 3.1)</p>'
        "</header>",
        "<nav>"
        + "".join(f'<a href="#tag-{_e(tag)}">{_e(tag)}</a>' for tag in by_tag)
        + '<a href="#schemas">schemas</a></nav>',
        "<main>",
    ]
    for tag, sections in by_tag.items():
        body.append(f'<h2 id="tag-{_e(tag)}">{_e(tag)}</h2>')
        body.extend(sections)
    body.append('<h2 id="schemas">Schemas</h2>')
    for name, schema in document["components"]["schemas"].items():
        body.append(f'<section class="op" id="schema-{_e(name)}"><h3>{_e(name)}</h3>{_schema_html(schema)}</section>')
    body.append("<h2>Authentication</h2>")
    for name, scheme in document["components"]["securitySchemes"].items():
        body.append(f"<p><code>{_e(name)}</code>: {_e(scheme.get('description', ''))}</p>")
    body.append("</main>")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(info['title'])} API</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
