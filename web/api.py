"""The HTTP API's contract: every ``/api/v1`` route is declared through ``flask-openapi3`` with pydantic
models for its path, query and body and for each response, so the models validate requests and the
same models make the OpenAPI 3.1 document (``GET /api/v1/openapi.json``).

What this module adds to the library:

- **One error shape.** A request the models refuse gets the API's documented error body, not the
  library's list: ``{"error": {"status": 400, "code": "invalid_input", "message", "field"}}`` with
  ``field`` the path to the first bad value as clients know it (``rules[2].pattern``,
  ``transport_options.proxy``) and the message in the API's words (``must be at most 200
  characters``). A path id that a path model refuses is 404, as an id that names nothing.
- **Who may call, before anything is parsed.** ``operation(...)`` records each route's scope;
  a before-request hook of every API blueprint authenticates the key (or, for the live streams, the
  dashboard session), checks the scope — a key limited to scopes gets 403 naming the one it lacks —
  and refuses a body that is not a JSON object, in that order, as the hand-written checks did.
- **Cheap query parsing.** The library asks a query model for its JSON schema on every request (a
  millisecond of CPU); ``QueryModel`` computes it once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from flask import current_app, g, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import context
from web import rate_limits
from web.errors import ApiError, error_response

SCOPES = ("read", "send", "manage")
SCOPE_MEANING = {
    "read": "read everything of the tenant: bots, conversations, messages, media, outbox, rules, AI settings, events,"
            " webhooks and their deliveries",
    "send": "write to customers: send messages, upload media, take conversations over, retry failed sends",
    "manage": "change the tenant: bots (create, start, stop, pair, delete), rules, AI settings, webhooks, users and"
              " API keys",
}
SECURITY_SCHEME: dict[str, Any] = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "wbk_…",
                              "description": "An API key: `Authorization: Bearer wbk_…`. A key may be limited to "
                                             "scopes (read, send, manage); each operation names the one it needs."}}


# -- models -----------------------------------------------------------------------------------------


class Model(BaseModel):
    """Request bodies: unknown fields are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid")


class QueryModel(BaseModel):
    """Query parameters. The library reads a query model's JSON schema for every request; computing
    it once per arguments keeps a query-validated request as cheap as one without."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    @functools.cache
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return super().model_json_schema(*args, **kwargs)


class HeaderModel(QueryModel):
    """Request headers (the library reads these schemas per request too: computed once)."""


class PathModel(BaseModel):
    """Path parameters: a value a path model refuses names nothing (404)."""


class ErrorDetail(BaseModel):
    status: int = Field(description="the HTTP status, again")
    code: str = Field(description="what went wrong, for programs: invalid_input, invalid_json, unauthorized, "
                                  "forbidden, not_found, conflict, payload_too_large, rate_limited, …")
    message: str = Field(description="what went wrong, for people")
    field: str | None = Field(None, description="the request field at fault, e.g. rules[2].pattern")


class ErrorBody(BaseModel):
    error: ErrorDetail
    request_id: str = Field(description="the request's X-Request-ID, to match a report to the logs")


class FieldError(ValueError):
    """Raised by a model's validator for a field other than the one being validated (a rule of
    several fields): reported with ``field`` as given, like ``sansio.rules.RuleError``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def body_config(*bodies: dict[str, Any], **config: Any) -> ConfigDict:
    """A request model's ``model_config`` with ``bodies`` as examples of its body, under ``openapi_extra``
    (flask-openapi3 puts them on the request body; pydantic's ``ConfigDict`` does not declare the key,
    hence the cast), plus pydantic's own ``config`` keys."""
    examples = {f"example-{n}": {"value": body} for n, body in enumerate(bodies, 1)}
    return cast(ConfigDict, {"openapi_extra": {"examples": examples}, **config})


def uuid_field(description: str, **kwargs: Any) -> Any:
    return Field(description=description, json_schema_extra={"format": "uuid"}, **kwargs)


# -- validation errors in the API's words ----------------------------------------------------------


def field_path(loc: Sequence[Any]) -> str | None:
    """``("rules", 2, "pattern")`` → ``rules[2].pattern``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def _allowed(model: type[BaseModel] | None, loc: Sequence[Any]) -> list[str]:
    """The field names of the (nested) model at ``loc`` (for "unknown field; allowed: …")."""
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        model = _model_of(info.annotation) if info is not None else None
    return sorted(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _message(error: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error") or error["msg"]).removeprefix("Value error, ")
    if kind == "missing" or (value is None and kind.endswith("_type")):
        return "is required"
    if kind == "extra_forbidden":
        allowed = _allowed(model, error["loc"][:-1])
        return (f"unknown field {str(error['loc'][-1])[:100]!r}"
                + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    if kind == "too_long" and "max_length" in ctx:
        return f"at most {ctx['max_length']} items"
    simple = {
        "string_type": "must be a string", "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "bool_type": "must be true or false", "bool_parsing": "must be true or false",
        "int_type": "must be a whole number", "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number", "float_parsing": "must be a number",
        "dict_type": "must be an object", "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "list_type": "must be a list", "uuid_parsing": "must be a UUID", "uuid_type": "must be a UUID",
        "literal_error": f"must be one of {ctx.get('expected', '').replace(' or ', ', ')}",
        "enum": f"must be one of {ctx.get('expected', '').replace(' or ', ', ')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "greater_than": f"must be more than {ctx.get('gt')}", "less_than": f"must be less than {ctx.get('lt')}",
    }
    return simple.get(kind, error["msg"])


def first_problem(
    exc: ValidationError, model: type[BaseModel] | None, prefix: Sequence[Any] = ()
) -> tuple[str | None, str]:
    """(field path, message) of the first problem a model found, as the API reports it. A validator
    may raise an error that names its own field (``sansio.rules.RuleError``: ``rules[2].pattern``)."""
    first = exc.errors(include_url=False)[0]
    raised = (first.get("ctx") or {}).get("error")
    field, reason = getattr(raised, "field", None), getattr(raised, "reason", None)
    if field and reason:
        return field, reason
    return field_path((*prefix, *first["loc"])), _message(first, model)


def validation_error(exc: ValidationError) -> Any:
    """The library's validation-error callback: the first problem, as the API reports it."""
    model = _models().get(exc.title)
    first = exc.errors(include_url=False)[0]
    if model is not None and issubclass(model, PathModel):
        return error_response(404, "not_found", "not found")
    if not first["loc"] and first["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return error_response(400, "invalid_json", "request body must be a JSON object")
    field, message = first_problem(exc, model)
    return error_response(400, "invalid_input", message, field)


def _models() -> dict[str, type[BaseModel]]:
    """Every model of the API by name (a validation error names its model)."""
    found = current_app.extensions.get("wabot.api_models")
    if found is None:
        found = {}
        for kind in (Model, QueryModel, PathModel):
            stack = list(kind.__subclasses__())
            while stack:
                cls = stack.pop()
                found[cls.__name__] = cls
                stack.extend(cls.__subclasses__())
        current_app.extensions["wabot.api_models"] = found
    return found


# -- operations ------------------------------------------------------------------------------------


def error_responses(*statuses: int) -> dict[int, Any]:
    return dict.fromkeys(statuses, ErrorBody)


def operation(bp: APIBlueprint, method: str, rule: str, *, scope: str | None, summary: str,
              responses: dict[int, Any], operation_id: str, auth: str = "key", description: str | None = None,
              raw_body: bool = False, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an API operation: its scope (None: anyone with a key), how callers authenticate (``key``,
    ``key_or_session`` for the browser's streams, ``none``), and its documented responses (401, 403
    and 500 are added; 400 and 404 are the caller's to list)."""
    if scope is not None and scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    documented = dict(responses)
    if auth != "none":
        documented.setdefault(401, ErrorBody)
        if scope is not None:
            documented.setdefault(403, ErrorBody)
    documented.setdefault(500, ErrorBody)
    security = [] if auth == "none" else [{"bearer": [scope] if scope else []}]

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        view.scope, view.auth, view.raw_body = scope, auth, raw_body  # type: ignore[attr-defined]
        register = getattr(bp, method)
        return register(rule, summary=summary, description=description, responses=documented, security=security,
                        operation_id=operation_id, **options)(view)

    return decorate


def api_blueprint(name: str, import_name: str, tag: str, description: str) -> APIBlueprint:
    bp = APIBlueprint(name, import_name, abp_tags=[Tag(name=tag, description=description)])
    bp.before_request(_admit)
    return bp


def _admit() -> None:
    """Before validation: authenticate, check the scope, refuse a body that is not a JSON object."""
    view = current_app.view_functions.get(request.endpoint or "")
    if view is None:
        return
    auth = getattr(view, "auth", "key")
    if auth != "none":
        _authenticate(allow_session=auth == "key_or_session")
        _limit()
        _check_scope(getattr(view, "scope", None))
    if (request.method in ("POST", "PUT", "PATCH") and not getattr(view, "raw_body", False) and request.data
            and not isinstance(request.get_json(silent=True), dict)):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")


def _authenticate(allow_session: bool) -> None:
    from db import tenants

    header = request.headers.get("Authorization", "")
    if not header and allow_session:
        from web.dashboard import session  # the dashboard imports the API's modules: import late

        person = session.current()
        if person is not None and person.tenant_disabled:
            raise tenants.TenantDisabled(str(person.tenant_id))
        if person is not None and person.tenant_id is not None and person.role is not None:
            g.tenant_id, g.person, g.scopes = person.tenant_id, person, ("read",)
            g.rate_subject = rate_limits.session_subject(person.session_id)
            context.set_current(context.current()._replace(tenant_id=person.tenant_id))
            return
        raise ApiError(401, "unauthorized",
                       "missing API key: send 'Authorization: Bearer <key>' (or sign in to the dashboard)")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    chosen = rate_limits.request_policy()
    # The key's lookup also counts the request against its limit: one round trip (migration 0025).
    found = tenants.authenticate_limited(current_app.extensions["wabot"].pool, key.strip(), chosen)
    if found is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    g.tenant_id, g.scopes, decision, g.audit_actor = found
    if chosen is not None and decision is not None:
        rate_limits.counted(g.tenant_id, chosen, decision)
    g.rate_subject = rate_limits.key_subject(key.strip())
    context.set_current(context.current()._replace(tenant_id=g.tenant_id))


def _limit() -> None:
    """Count the request against its key's (or session's) limit: 429 past it (web.rate_limits)."""
    decision = rate_limits.check(g.tenant_id, g.rate_subject)
    if decision is not None and not decision.allowed:
        who = "this dashboard session" if g.rate_subject.startswith("session:") else "this API key"
        raise ApiError(429, "rate_limited", rate_limits.refusal_message(decision, who))


def _check_scope(scope: str | None) -> None:
    scopes = g.get("scopes")
    if scope is None or scopes is None or scope in scopes:
        return
    raise ApiError(403, "forbidden", f"this key lacks the scope {scope!r} (it has: {', '.join(scopes) or 'none'})")
