"""The OpenAPI 3.1 document of the HTTP API, generated from the same pydantic models the handlers use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from gateway.http.bodies import ProblemDocument

# Refusals any keyed route may answer besides its own.
_KEYED_PROBLEMS = {401: "no, unknown, revoked or expired key", 403: "the key lacks the scope",
                   429: "over the key's rate (Retry-After)"}
_BODY_PROBLEMS = {413: "body too large", 422: "invalid body"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with {name} parameters ({id}: an integer; others: a string)
    summary: str
    scope: str | None = None
    body: type[BaseModel] | None = None
    answers: dict[int, type[BaseModel] | str] = field(default_factory=dict)  # a model, or a media type
    problems: dict[int, str] = field(default_factory=dict)  # its own refusals
    query: dict[str, str] = field(default_factory=dict)  # optional query parameters (strings): name -> what


def document(operations: list[Operation], version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        if model.__name__ not in schemas:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, Any] = {}
    for op in operations:
        path = op.path
        item: dict[str, Any] = {"summary": op.summary, "operationId": f"{op.method.lower()}{_camel(path)}",
                                "responses": {}}
        params = re.findall(r"\{(\w+)\}", path)
        if params:
            item["parameters"] = [{"name": p, "in": "path", "required": True,
                                   "schema": {"type": "integer" if p == "id" else "string"}} for p in params]
        if op.query:
            item.setdefault("parameters", []).extend(
                {"name": name, "in": "query", "required": False, "description": what, "schema": {"type": "string"}}
                for name, what in op.query.items())
        if op.scope is not None:
            item["security"] = [{"bearer": []}]
            item["description"] = f"Needs a key with the scope `{op.scope}` (or `admin`)."
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(op.body)}}}
        for status, answer in op.answers.items():
            content = {answer: {"schema": {"type": "string"}}} if isinstance(answer, str) else \
                {"application/json": {"schema": ref(answer)}}
            item["responses"][str(status)] = {"description": _description(status), "content": content}
        problems = {**(_KEYED_PROBLEMS if op.scope else {}), **(_BODY_PROBLEMS if op.body else {}), **op.problems}
        for status, why in sorted(problems.items()):
            item["responses"][str(status)] = {
                "description": why, "content": {"application/problem+json": {"schema": ref(ProblemDocument)}}}
        paths.setdefault(path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchboard HTTP API", "version": version},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "a key from `switchboard keys create`"}}},
    }


def _camel(path: str) -> str:
    return "".join(part.strip("{}").capitalize() for part in re.split(r"[/_.]", path) if part)


def _description(status: int) -> str:
    return {101: "a WebSocket", 200: "OK", 202: "accepted: in the database"}.get(status, str(status))
