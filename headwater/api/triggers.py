"""`/v1/triggers`, `/v1/actions`, `/v1/type-mappings`, journeys and subject profiles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api import audit
from headwater.api.common import authorize, int_param, json_response, position_cursor, read_json
from headwater.api.events import draft_from
from headwater.auth import Principal
from headwater.errors import ApiError, bad_request
from headwater.events import EventDraft, FieldError, Rejection
from headwater.ids import new_prefixed_id
from headwater.parsing import decode_json, field_error, out_of_range_numbers
from headwater.processing.conditions import ConditionError, EventView, explain
from headwater.processing.rules import (
    DEFAULT_TYPE_MAPPINGS,
    Action,
    RuleError,
    TriggerIn,
    Window,
    compile_trigger,
)
from headwater.services import Services
from headwater.storage.records import ActionQuery, ActionRecord, Enrollment
from headwater.storage.registry import TriggerRecord

_rule = msgspec.json.Decoder(TriggerIn)
_encode = msgspec.json.encode
MAX_MAPPED_TYPES = 1000


class TriggerOut(msgspec.Struct):
    id: str
    name: str
    event_types: list[str]
    conditions: dict[str, Any] | None
    window: Window | None
    cooldown: str | None
    priority: int
    enabled: bool
    action: Action
    created_at: datetime
    updated_at: datetime


class TriggerList(msgspec.Struct):
    data: list[TriggerOut]


class ActionPage(msgspec.Struct):
    data: list[ActionRecord]
    next_cursor: str | None


class DryRun(msgspec.Struct, forbid_unknown_fields=True):
    event: msgspec.Raw
    # msgspec.Raw cannot sit in a union with None: an absent trigger reads as `null`.
    trigger: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    trigger_id: str | None = None


class DryRunResult(msgspec.Struct):
    matched: bool
    reasons: list[str]
    notes: list[str]


class TypeMappings(msgspec.Struct, forbid_unknown_fields=True):
    mappings: dict[str, list[str]]


class EnrollmentList(msgspec.Struct):
    data: list[Enrollment]


def _out(record: TriggerRecord) -> TriggerOut:
    rule = _rule.decode(record.definition)
    return TriggerOut(
        record.id,
        rule.name,
        rule.event_types,
        rule.conditions,
        rule.window,
        rule.cooldown,
        rule.priority,
        rule.enabled,
        rule.action,
        record.created_at,
        record.updated_at,
    )


def _validated(body: bytes) -> TriggerIn:
    """Decode and compile a definition; every problem is a 400 naming the bad node."""
    try:
        rule: TriggerIn = decode_json(body, TriggerIn)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid trigger", [field_error(exc)]) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    try:
        compile_trigger("check", rule)
    except (RuleError, ConditionError) as exc:
        raise ApiError(400, "invalid trigger", [FieldError(exc.path, "invalid", exc.message)]) from None
    return rule


async def _body(request: Request) -> bytes:
    body = await request.body()
    if not body:
        raise bad_request("request body is empty: send a JSON object", code="required")
    return body


class TriggerRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store

    async def found(self, principal: Principal, trigger_id: str) -> TriggerRecord:
        record = await self.store.registry.get_trigger(principal.tenant, principal.mode, trigger_id)
        if record is None:
            raise ApiError(404, "no such trigger")
        return record

    async def check_endpoint(self, principal: Principal, rule: TriggerIn) -> None:
        """A `webhook` action must name an endpoint of the caller's tenant and mode: refused now,
        not failed at every firing. The message is the same whether the id is unknown or another
        tenant's or mode's, so it tells nothing about them."""
        if rule.action.type != "webhook":
            return
        endpoint_id = rule.action.config["endpoint_id"]
        if await self.store.registry.get_webhook(principal.tenant, principal.mode, endpoint_id) is None:
            message = f"no webhook endpoint {endpoint_id!r} in this tenant and mode"
            raise ApiError(400, "invalid trigger", [FieldError("action.config.endpoint_id", "not_found", message)])

    async def save(self, principal: Principal, rule: TriggerIn, existing: TriggerRecord | None) -> TriggerRecord:
        now = datetime.now(UTC)
        record = TriggerRecord(
            id=existing.id if existing else new_prefixed_id("trg"),
            tenant=principal.tenant,
            mode=principal.mode,
            definition=msgspec.Raw(_encode(rule)),
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        await self.store.registry.put_trigger(record)
        await audit.record(self.services, principal, "trigger.update" if existing else "trigger.create", record.id)
        return record

    async def create(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        rule = _validated(await _body(request))
        await self.check_endpoint(principal, rule)
        return json_response(_out(await self.save(principal, rule, None)), status=201)

    async def list_all(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        records = await self.store.registry.list_triggers(principal.tenant, principal.mode)
        return json_response(TriggerList([_out(r) for r in records]))

    async def get_one(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        return json_response(_out(await self.found(principal, request.path_params["trigger_id"])))

    async def patch(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        existing = await self.found(principal, request.path_params["trigger_id"])
        changes = await read_json(request, dict[str, msgspec.Raw])
        merged = msgspec.json.decode(existing.definition, type=dict[str, msgspec.Raw])
        merged.update(changes)
        rule = _validated(_encode(merged))
        # Only a changed action is checked: a trigger whose endpoint has since been deleted can
        # still be disabled or renamed.
        if "action" in changes:
            await self.check_endpoint(principal, rule)
        return json_response(_out(await self.save(principal, rule, existing)))

    async def delete(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        record = await self.found(principal, request.path_params["trigger_id"])
        await self.store.registry.delete_trigger(principal.tenant, principal.mode, record.id)
        await audit.record(self.services, principal, "trigger.delete", record.id)
        return json_response(_out(record))

    async def dry_run(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        body: DryRun = await read_json(request, DryRun)
        inline = bytes(body.trigger) != b"null"
        if inline == (body.trigger_id is not None):
            raise bad_request("send either trigger or trigger_id", "trigger", "required")
        if inline:
            rule = _validated(bytes(body.trigger))
        else:
            rule = _rule.decode((await self.found(principal, body.trigger_id or "")).definition)
        draft = draft_from(bytes(body.event))
        if isinstance(draft, EventDraft) and (out_of_range := out_of_range_numbers(draft.data)):
            draft = Rejection(out_of_range)
        if isinstance(draft, Rejection):
            raise ApiError(
                400, "invalid sample event", [FieldError(f"event.{e.field}", e.code, e.message) for e in draft.errors]
            )
        event = self.services.pipeline.stamp(principal, draft, datetime.now(UTC))
        mappings = await self.store.registry.get_type_mappings(principal.tenant, principal.mode)
        fires_on = (event.type, *(DEFAULT_TYPE_MAPPINGS if mappings is None else mappings).get(event.type, []))
        reasons = []
        if not set(fires_on) & set(rule.event_types):
            reasons.append(
                f"event type {event.type!r} (fires on {list(fires_on)}) is not in event_types {rule.event_types}"
            )
        reasons += explain(rule.conditions, EventView(event))
        if not rule.enabled:
            reasons.append("the trigger is disabled")
        notes = []
        if rule.window is not None or rule.cooldown is not None:
            notes.append("window and cooldown depend on earlier events and are not evaluated in a dry run")
        return json_response(DryRunResult(not reasons, reasons, notes))

    async def list_actions(self, request: Request, trigger_id: str | None = None) -> Response:
        principal = await authorize(self.services, request, "read")
        params = request.query_params
        status = params.get("status")
        if status is not None and status not in ("dispatched", "skipped", "failed"):
            raise bad_request("status must be dispatched, skipped or failed", "status", "invalid")
        before = position_cursor(request)
        limit = int_param(request, "limit", 100, 1, 1000)
        query = ActionQuery(
            principal.tenant,
            principal.mode,
            type=params.get("type"),
            subject=params.get("subject"),
            trigger_id=trigger_id or params.get("trigger"),
            event_id=params.get("event"),
            status=status,  # type: ignore[arg-type]
            before=before,
            limit=limit + 1,
        )
        rows = await self.store.derived.list_actions(query)
        page = rows[:limit]
        next_cursor = str(page[-1][0]) if len(rows) > limit else None
        return json_response(ActionPage([action for _, action in page], next_cursor))

    async def firings(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        record = await self.found(principal, request.path_params["trigger_id"])
        return await self.list_actions(request, record.id)

    async def get_mappings(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        mappings = await self.store.registry.get_type_mappings(principal.tenant, principal.mode)
        return json_response(TypeMappings(DEFAULT_TYPE_MAPPINGS if mappings is None else mappings))

    async def put_mappings(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        body: TypeMappings = await read_json(request, TypeMappings)
        for source, targets in body.mappings.items():
            if not 1 <= len(source) <= 128 or any(not 1 <= len(t) <= 128 for t in targets):
                raise bad_request("event types are 1-128 characters", f"mappings.{source}", "invalid")
        if sum(len(t) for t in body.mappings.values()) > MAX_MAPPED_TYPES:
            raise bad_request(f"at most {MAX_MAPPED_TYPES} mapped types", "mappings", "too_many")
        await self.store.registry.put_type_mappings(principal.tenant, principal.mode, body.mappings, datetime.now(UTC))
        await audit.record(self.services, principal, "type_mappings.update", None, types=len(body.mappings))
        return json_response(body)

    async def enrollments(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        rows = await self.store.derived.list_enrollments(
            principal.tenant, principal.mode, request.path_params["journey_id"]
        )
        return json_response(EnrollmentList(rows))

    async def subject(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        subject_id = request.path_params["subject_id"]
        profile = await self.store.derived.get_profile(principal.tenant, principal.mode, subject_id)
        if profile is None:
            raise ApiError(404, "no profile for this subject")
        return json_response(profile)

    async def list_all_actions(self, request: Request) -> Response:
        return await self.list_actions(request)


def routes(services: Services) -> list[BaseRoute]:
    r = TriggerRoutes(services)
    return [
        Route("/v1/triggers", r.create, methods=["POST"]),
        Route("/v1/triggers", r.list_all, methods=["GET"]),
        Route("/v1/triggers/test", r.dry_run, methods=["POST"]),
        Route("/v1/triggers/{trigger_id}", r.get_one, methods=["GET"]),
        Route("/v1/triggers/{trigger_id}", r.patch, methods=["PATCH"]),
        Route("/v1/triggers/{trigger_id}", r.delete, methods=["DELETE"]),
        Route("/v1/triggers/{trigger_id}/firings", r.firings, methods=["GET"]),
        Route("/v1/actions", r.list_all_actions, methods=["GET"]),
        Route("/v1/type-mappings", r.get_mappings, methods=["GET"]),
        Route("/v1/type-mappings", r.put_mappings, methods=["PUT"]),
        Route("/v1/journeys/{journey_id}/enrollments", r.enrollments, methods=["GET"]),
        Route("/v1/subjects/{subject_id}", r.subject, methods=["GET"]),
    ]
