"""The OpenAPI document is true: every route of the blueprint is documented, every documented
operation exists, every example validates against its schema, and the served copy is it."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from quart_trio import QuartTrio
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.devapi import openapi
from gateway.devapi.problems import TYPES
from gateway.http import api as api_module

DOC = openapi.document()
AUTO = {"HEAD"}  # Quart answers HEAD for every GET route itself


class _NoServices:
    """The blueprint factory only closes over services; building routes needs none of it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"building the blueprint touched services.{name}")


def blueprint_operations() -> set[tuple[str, str]]:
    app = QuartTrio(__name__)
    app.register_blueprint(api_module.blueprint(_NoServices()))  # type: ignore[arg-type]
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("api.") or rule.endpoint == "api.fallback":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        methods = set(rule.methods or ()) - AUTO
        if getattr(rule, "provide_automatic_options", False):
            methods.discard("OPTIONS")
        for method in methods:
            found.add((path, method.lower()))
    return found


def documented_operations() -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in DOC["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete", "options")
    }


def test_every_route_is_documented_and_every_documented_route_exists():
    # Path parameter names differ only in spelling ({id} is <notification> in the code).
    def shape(ops: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return {(re.sub(r"\{[^}]+\}", "{}", p), m) for p, m in ops}

    routes, documented = shape(blueprint_operations()), shape(documented_operations())
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations with no route"


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    resource = Resource.from_contents(DOC, default_specification=DRAFT202012)
    registry: Registry = Registry().with_resource("urn:doc", resource)
    rebased = _rebase(schema)
    return jsonschema.Draft202012Validator(rebased, registry=registry)


def _rebase(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: ("urn:doc" + v if k == "$ref" and v.startswith("#") else _rebase(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


def examples() -> list[tuple[str, dict[str, Any], Any]]:
    found = []
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {})
            for media, spec in body.items():
                if "example" in spec:
                    found.append(
                        (f"{method} {path} request {media}", spec["schema"], spec["example"])
                    )
            for status, response in op["responses"].items():
                for media, spec in response.get("content", {}).items():
                    if "example" in spec:
                        found.append(
                            (f"{method} {path} {status} {media}", spec["schema"], spec["example"])
                        )
            for param in op.get("parameters", []):
                if "example" in param:
                    found.append(
                        (f"{method} {path} {param['name']}", param["schema"], param["example"])
                    )
    return found


@pytest.mark.parametrize(
    ("where", "schema", "example"), examples(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_examples_validate_against_their_schemas(where, schema, example):
    errors = list(_validator(schema).iter_errors(example))
    assert not errors, f"{where}: {[e.message for e in errors]}"


def test_schemas_are_valid_json_schema_and_counter_examples_fail():
    for name, schema in DOC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert name
    request = {"$ref": "#/components/schemas/NotificationRequest"}
    validator = _validator(request)
    assert validator.is_valid({"subscriber": "sub_AbCdEfGhIjKlMnOp", "text": "x"})
    for bad in (
        {"subscriber": "sub_AbCdEfGhIjKlMnOp"},
        {"text": "x"},
        {"subscriber": "sub_AbCdEfGhIjKlMnOp", "channel": "c", "external_id": "1", "text": "x"},
        {"channel": "c", "text": "x"},
        {"subscriber": "sub_AbCdEfGhIjKlMnOp", "text": "x", "more": 1},
    ):
        assert not validator.is_valid(bad), bad


def test_every_error_status_has_a_problem_type_and_the_page_lists_them():
    statuses = {t.status for t in TYPES.values()}
    for item in DOC["paths"].values():
        for op in item.values():
            for status in op["responses"]:
                if status.startswith(("4", "5")):
                    assert int(status) in statuses, status


async def test_the_served_document_is_this_one(api):
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert await response.get_json() == DOC
    assert DOC["openapi"].startswith("3.1")
