"""The tenant's webhook endpoints over the API: create, list, read, change, delete, rotate the secret,
send a test event; the delivery log, one delivery, replay one or every failed one in a time range.

The web process only records: a test event or a replay is a delivery row set due now (and a
notification); the delivery workers in the supervisor processes send it. A URL is checked when it is
saved — its form (``sansio.outbound_address.parse_url``) and every address its name resolves to
(``core.webhook_http.resolve``) — so a tenant learns at once that the platform will not call it; the
workers check again before every request, since DNS answers change. The secret is in the answers to
create and rotate only.
"""

from __future__ import annotations

from typing import Any

from flask import g, jsonify

from core import webhook_http
from db import webhook_endpoints as db
from sansio.outbound_address import AddressRefused, parse_url
from web import audit, paging
from web import validation as v
from web.api import api_blueprint, error_responses, operation
from web.auth import system
from web.errors import ApiError, bad_request, not_found
from web.schemas.webhooks import (
    DeliveriesQuery,
    DeliveryDetail,
    DeliveryList,
    DeliveryPath,
    Replayed,
    ReplayFailed,
    Webhook,
    WebhookCreate,
    WebhookList,
    WebhookPath,
    WebhookUpdate,
    WebhookWithSecret,
)

blueprint = api_blueprint("webhooks", __name__, "Webhooks",
                          "Endpoints the platform POSTs the tenant's events to (signed, Standard Webhooks), and each"
                          " delivery's log. Payloads and signatures: docs/webhooks.md.")


def check_url(url: str) -> str:
    """The URL when the platform may call it; otherwise 400 naming ``url`` with the policy's reason."""
    settings = system().settings
    try:
        target = parse_url(url, allow_http=settings.webhooks_allow_http)
        webhook_http.resolve(target, allow_private=settings.allow_private_addresses)
    except AddressRefused as exc:
        raise bad_request("url", str(exc)) from None
    return url


def check_bots(bot_ids: list[str] | None) -> None:
    """400 naming the first id that is not one of the tenant's bots."""
    if bot_ids:
        missing = db.missing_bots(system().pool, g.tenant_id, bot_ids)
        if missing:
            raise bad_request(f"bot_ids[{missing[0]}]", "is not one of your bots")


def _webhook_id(raw: str) -> str:
    return v.uuid_arg(raw, "webhook")


def audit_view(endpoint: dict[str, Any]) -> dict[str, Any]:
    """What the audit log keeps of an endpoint (never its secret)."""
    return {key: endpoint.get(key) for key in ("url", "description", "event_types", "bot_ids", "enabled")}


def _conflict(exc: db.Conflict) -> ApiError:
    return ApiError(409, "conflict", str(exc))


@operation(blueprint, "get", "/webhooks", scope="read", summary="The tenant's webhook endpoints, oldest first",
           operation_id="listWebhooks", responses={200: WebhookList})
def list_webhooks() -> Any:
    return jsonify({"webhooks": db.list_all(system().pool, g.tenant_id)})


@operation(blueprint, "post", "/webhooks", scope="manage", summary="Add a webhook endpoint",
           description="The answer carries the signing secret (`whsec_…`) this once. The URL must be https:// and"
                       " resolve to public addresses only (400 `field: url` says why not).",
           operation_id="createWebhook", responses={201: WebhookWithSecret, **error_responses(400)})
def create_webhook(body: WebhookCreate) -> Any:
    url = check_url(body.url)
    check_bots(body.bot_ids)
    endpoint, secret = db.create(system().pool, g.tenant_id, url, body.description, body.event_types, body.bot_ids,
                                 body.enabled)
    audit.note("webhook_endpoint.create", "webhook_endpoint", endpoint["id"], after=audit_view(endpoint))
    return jsonify({**endpoint, "secret": secret}), 201


@operation(blueprint, "get", "/webhooks/<webhook_id>", scope="read", summary="A webhook endpoint and its state",
           operation_id="getWebhook", responses={200: Webhook, **error_responses(404)})
def get_webhook(path: WebhookPath) -> Any:
    endpoint = db.get(system().pool, g.tenant_id, _webhook_id(path.webhook_id))
    if endpoint is None:
        raise not_found("webhook")
    return jsonify(endpoint)


@operation(blueprint, "patch", "/webhooks/<webhook_id>", scope="manage", summary="Change a webhook endpoint",
           description="Only what is sent changes. `enabled: true` turns a disabled endpoint on again: its reason"
                       " and failing_since are cleared and what was pending is sent.",
           operation_id="updateWebhook", responses={200: Webhook, **error_responses(400, 404)})
def update_webhook(path: WebhookPath, body: WebhookUpdate) -> Any:
    webhook_id = _webhook_id(path.webhook_id)
    pool = system().pool
    if db.get(pool, g.tenant_id, webhook_id) is None:
        raise not_found("webhook")  # before the URL's lookup: another tenant's id learns nothing
    url = None if body.url is None else check_url(body.url)
    check_bots(body.bot_ids)
    changes: dict[str, Any] = {"url": url, "description": body.description, "event_types": body.event_types,
                               "enabled": body.enabled}
    if "bot_ids" in body.model_fields_set:
        changes["bot_ids"] = body.bot_ids
    endpoint = db.update(pool, g.tenant_id, webhook_id, **changes)
    if endpoint is None:
        raise not_found("webhook")
    audit.note("webhook_endpoint.update", "webhook_endpoint", webhook_id,
               after={key: value for key, value in changes.items() if value is not None or key == "bot_ids"})
    return jsonify(endpoint)


@operation(blueprint, "delete", "/webhooks/<webhook_id>", scope="manage",
           summary="Delete a webhook endpoint and its delivery log", operation_id="deleteWebhook",
           responses={204: None, **error_responses(404)})
def delete_webhook(path: WebhookPath) -> Any:
    webhook_id = _webhook_id(path.webhook_id)
    if not db.delete(system().pool, g.tenant_id, webhook_id):
        raise not_found("webhook")
    audit.note("webhook_endpoint.delete", "webhook_endpoint", webhook_id)
    return "", 204


@operation(blueprint, "post", "/webhooks/<webhook_id>/rotate-secret", scope="manage",
           summary="Give the endpoint a new signing secret",
           description="The answer carries the new secret this once. For 24 hours (until"
                       " `previous_secret_valid_until`) each request is signed with both, so the receiver can switch"
                       " over without losing a request.",
           operation_id="rotateWebhookSecret", responses={200: WebhookWithSecret, **error_responses(404)})
def rotate_secret(path: WebhookPath) -> Any:
    found = db.rotate_secret(system().pool, g.tenant_id, _webhook_id(path.webhook_id))
    if found is None:
        raise not_found("webhook")
    endpoint, secret = found
    audit.note("webhook_endpoint.rotate_secret", "webhook_endpoint", endpoint["id"])  # never the secret
    return jsonify({**endpoint, "secret": secret})


@operation(blueprint, "post", "/webhooks/<webhook_id>/test", scope="manage", summary="Send a test event",
           description="Queues a `webhook.test` delivery (whatever the endpoint's event types); its outcome shows in"
                       " the log. A disabled endpoint: 409.",
           operation_id="testWebhook", responses={202: DeliveryDetail, **error_responses(404, 409)})
def send_test_event(path: WebhookPath) -> Any:
    try:
        delivery = db.send_test(system().pool, g.tenant_id, _webhook_id(path.webhook_id))
    except db.Conflict as exc:
        raise _conflict(exc) from None
    if delivery is None:
        raise not_found("webhook")
    audit.note("webhook_endpoint.test", "webhook_endpoint", _webhook_id(path.webhook_id),
               after={"delivery_id": delivery["id"]})
    return jsonify(delivery), 202


@operation(blueprint, "get", "/webhooks/<webhook_id>/deliveries", scope="read",
           summary="The endpoint's delivery log, newest first",
           description="Each delivery with every attempt (status, duration, error, the first KB of the answer);"
                       " filter by state, type and creation time; keyset-paged. Kept for WEBHOOK_RETENTION.",
           operation_id="listWebhookDeliveries", responses={200: DeliveryList, **error_responses(400, 404)})
def list_deliveries(path: WebhookPath, query: DeliveriesQuery) -> Any:
    rows = db.list_deliveries(system().pool, g.tenant_id, _webhook_id(path.webhook_id), state=query.state,
                              type_pattern=query.type, since=query.since_at, until=query.until_at, limit=query.limit,
                              before=paging.parse_before(query.before))
    if rows is None:
        raise not_found("webhook")
    rows, cursor = paging.page(rows, query.limit, "sort_at")
    return jsonify({"deliveries": rows, "next_before": cursor})


@operation(blueprint, "get", "/webhooks/<webhook_id>/deliveries/<delivery_id>", scope="read",
           summary="One delivery, with the event's data and every attempt", operation_id="getWebhookDelivery",
           responses={200: DeliveryDetail, **error_responses(404)})
def get_delivery(path: DeliveryPath) -> Any:
    delivery = db.get_delivery(system().pool, g.tenant_id, _webhook_id(path.webhook_id),
                               v.uuid_arg(path.delivery_id, "delivery"))
    if delivery is None:
        raise not_found("delivery")
    return jsonify(delivery)


@operation(blueprint, "post", "/webhooks/<webhook_id>/deliveries/<delivery_id>/replay", scope="manage",
           summary="Send a delivery again",
           description="Whatever its outcome so far: attempts from zero, due now, the same webhook-id (receivers"
                       " dedupe on it). 409 while a request for it is in flight, or when the endpoint is disabled.",
           operation_id="replayWebhookDelivery", responses={202: DeliveryDetail, **error_responses(404, 409)})
def replay_delivery(path: DeliveryPath) -> Any:
    try:
        delivery = db.replay(system().pool, g.tenant_id, _webhook_id(path.webhook_id),
                             v.uuid_arg(path.delivery_id, "delivery"))
    except db.Conflict as exc:
        raise _conflict(exc) from None
    if delivery is None:
        raise not_found("delivery")
    audit.note("webhook_delivery.replay", "webhook_delivery", delivery["id"],
               after={"webhook_id": _webhook_id(path.webhook_id)})
    return jsonify(delivery), 202


@operation(blueprint, "post", "/webhooks/<webhook_id>/replay-failed", scope="manage",
           summary="Send every failed delivery in a time range again",
           description="Failed deliveries created in [since, until) (either left out: unbounded) are due again with"
                       " attempts from zero. 409 when the endpoint is disabled: enable it first.",
           operation_id="replayFailedWebhookDeliveries", responses={200: Replayed, **error_responses(400, 404, 409)})
def replay_failed(path: WebhookPath, body: ReplayFailed) -> Any:
    try:
        count = db.replay_failed(system().pool, g.tenant_id, _webhook_id(path.webhook_id), body.since_at,
                                 body.until_at)
    except db.Conflict as exc:
        raise _conflict(exc) from None
    if count is None:
        raise not_found("webhook")
    audit.note("webhook_endpoint.replay_failed", "webhook_endpoint", _webhook_id(path.webhook_id),
               after={"replayed": count, "since": body.since_at, "until": body.until_at})
    return jsonify({"replayed": count})
