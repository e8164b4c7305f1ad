"""The REST API's OpenAPI 3.1 document, served at ``/openapi.json``.

Written out as data; a test keeps it and the app's routes in step (every route documented, every
documented operation routed) and checks each operation's ``x-mesh-role`` against the roles in
`control_plane.auth`. Shapes are the mesh.v1 messages in the protobuf JSON mapping: lowerCamelCase
names, int64 values as decimal strings, timestamps as RFC 3339 strings.
"""

from __future__ import annotations

from typing import Any

from control_plane.resources import KINDS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"} for status in statuses}


# status -> (component name, description)
ERROR_RESPONSES = {
    "400": (
        "BadRequest",
        "Invalid request or document (INVALID_ARGUMENT); names document, field and reason.",
    ),
    "401": ("Unauthenticated", "No bearer token, or one that does not verify (UNAUTHENTICATED)."),
    "403": ("PermissionDenied", "The token's role may not perform this operation (PERMISSION_DENIED)."),
    "404": ("NotFound", "No such resource or revision (NOT_FOUND)."),
    "409": ("Conflict", "A stale resourceVersion: the resource changed since it was read (ABORTED)."),
    "413": ("PayloadTooLarge", "The request body is over the limit, 4 MiB (RESOURCE_EXHAUSTED)."),
    "415": ("UnsupportedMediaType", "A body in a content type this endpoint does not take."),
}

_AUTH_ERRORS = ("401", "403")

_RESOURCE_PARAMETERS = [
    {"$ref": "#/components/parameters/kind"},
    {"$ref": "#/components/parameters/namespace"},
    {"$ref": "#/components/parameters/name"},
]

_INT64 = {"type": "string", "pattern": "^-?[0-9]+$", "description": "An int64, as a decimal string."}
_INT64_INPUT = {
    "description": "An int64: a JSON number or a decimal string.",
    "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^[0-9]+$"}],
}
_TIMESTAMP = {"type": "string", "format": "date-time"}
_SPEC = {"type": "object", "additionalProperties": True, "description": "The document's spec."}

SCHEMAS: dict[str, Any] = {
    "Document": {
        "type": "object",
        "description": "A policy document as written in YAML (Istio's kinds, in the subset the mesh "
        "supports). A field the mesh does not support is an error, never ignored.",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "examples": ["networking.istio.io/v1"]},
            "kind": {"type": "string", "enum": list(KINDS)},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string", "default": "default"},
                    "resourceVersion": {
                        **_INT64_INPUT,
                        "description": "Apply only if the resource is still at this version (0: only if it "
                        "does not exist yet); otherwise 409.",
                    },
                },
            },
            "spec": _SPEC,
        },
    },
    "Resource": {
        "type": "object",
        "required": ["kind", "namespace", "name", "resourceVersion"],
        "properties": {
            "kind": {"type": "string", "enum": list(KINDS)},
            "namespace": {"type": "string"},
            "name": {"type": "string"},
            "spec": _SPEC,
            "resourceVersion": {**_INT64, "description": "The store revision of the last change."},
            "updateTime": _TIMESTAMP,
        },
    },
    "ApplyResult": {
        "type": "object",
        "required": ["resource", "action", "diff"],
        "properties": {
            "resource": _ref("Resource"),
            "action": {"type": "string", "enum": ["created", "updated", "unchanged", "deleted"]},
            "diff": {"type": "string", "description": "A unified diff of the spec, as YAML."},
        },
    },
    "Revision": {
        "type": "object",
        "required": ["resourceVersion", "time", "deleted"],
        "properties": {
            "resourceVersion": _INT64,
            "time": _TIMESTAMP,
            "spec": {**_SPEC, "description": "Absent for a deletion."},
            "deleted": {"type": "boolean"},
        },
    },
    "SidecarStatus": {
        "type": "object",
        "properties": {
            "nodeId": {"type": "string"},
            "service": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "inboundAddress": {"type": "string"},
            "identity": {"type": "string", "description": "The SPIFFE ID in the sidecar's certificate."},
            "appliedVersion": {"type": "string", "description": "The last snapshot version it ACKed."},
            "sentVersion": {"type": "string", "description": "The last snapshot version sent to it."},
            "state": {"type": "string", "enum": ["ACK", "NACK", "PENDING"]},
            "nackReason": {"type": "string"},
            "lastSeen": _TIMESTAMP,
            "connected": {"type": "boolean"},
            "serving": {"type": "boolean"},
            "adminAddress": {"type": "string"},
            "appliedRevision": {
                **_INT64,
                "description": "The store revision its applied snapshot was built from.",
            },
            "sentRevision": {
                **_INT64,
                "description": "The store revision the last sent snapshot was built for; a NACK with "
                "sentRevision >= R is a rejection of revision R.",
            },
            "identityVerified": {
                "type": "boolean",
                "description": "The sidecar proved its identity with a certificate from the mesh CA.",
            },
            "certificateSerial": {"type": "string", "description": "That certificate's serial (hex)."},
            "certificateNotAfter": {**_TIMESTAMP, "description": "That certificate's expiry."},
        },
    },
    "ApplyRequest": {
        "type": "object",
        "required": ["documents"],
        "additionalProperties": False,
        "properties": {
            "documents": {"type": "array", "items": _ref("Document")},
            "dryRun": {
                "type": "boolean",
                "default": False,
                "description": "Validate and diff, store nothing.",
            },
        },
    },
    "ApplyResponse": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ref("ApplyResult")}},
    },
    "GetResourceResponse": {
        "type": "object",
        "required": ["resource"],
        "properties": {"resource": _ref("Resource")},
    },
    "ListResourcesResponse": {
        "type": "object",
        "required": ["resources"],
        "properties": {"resources": {"type": "array", "items": _ref("Resource")}},
    },
    "DeleteResourceResponse": {
        "type": "object",
        "required": ["result"],
        "properties": {"result": _ref("ApplyResult")},
    },
    "ListRevisionsResponse": {
        "type": "object",
        "required": ["revisions"],
        "properties": {"revisions": {"type": "array", "items": _ref("Revision")}},
    },
    "RollbackRequest": {
        "type": "object",
        "required": ["toResourceVersion"],
        "additionalProperties": False,
        "properties": {
            "toResourceVersion": {
                **_INT64_INPUT,
                "description": "The revision whose spec becomes current again.",
            },
            "resourceVersion": {
                **_INT64_INPUT,
                "description": "Roll back only if the resource is still at this version (so the rollback "
                "cannot undo a change made since it was read); otherwise 409.",
            },
            "dryRun": {"type": "boolean", "default": False},
        },
    },
    "RollbackResponse": {
        "type": "object",
        "required": ["result"],
        "properties": {"result": _ref("ApplyResult")},
    },
    "ListSidecarsResponse": {
        "type": "object",
        "required": ["sidecars", "storeRevision"],
        "properties": {
            "sidecars": {"type": "array", "items": _ref("SidecarStatus")},
            "storeRevision": {
                **_INT64,
                "description": "The store's latest revision: a sidecar whose appliedRevision is at least "
                "this has every change made so far.",
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "The gRPC status name the gRPC API would answer with.",
                        "examples": ["INVALID_ARGUMENT"],
                    },
                    "message": {
                        "type": "string",
                        "examples": [
                            "VirtualService users: spec.http[0].route: weights sum to 90, must be 100"
                        ],
                    },
                    "document": {"type": "string", "examples": ["VirtualService users"]},
                    "field": {"type": "string", "examples": ["spec.http[0].route"]},
                    "reason": {"type": "string", "examples": ["weights sum to 90, must be 100"]},
                },
            }
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}

PATHS: dict[str, Any] = {
    "/api/v1/apply": {
        "post": {
            "operationId": "apply",
            "x-mesh-role": "admin",
            "summary": "Validate and store documents atomically: all of them or none.",
            "parameters": [{"$ref": "#/components/parameters/dryRun"}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref("ApplyRequest")},
                    "application/yaml": {
                        "schema": {
                            "type": "string",
                            "description": "One or more YAML documents, '---' between (a document "
                            "that is a list is read as its items: a JSON array of documents).",
                        }
                    },
                },
            },
            "responses": {
                "200": _json_body("ApplyResponse", "What each document did (or would do, in a dry run)."),
                **_errors("400", *_AUTH_ERRORS, "404", "409", "413", "415"),
            },
        }
    },
    "/api/v1/resources": {
        "get": {
            "operationId": "listResources",
            "x-mesh-role": "read",
            "summary": "List resources, sorted by kind, namespace and name.",
            "parameters": [
                {"name": "kind", "in": "query", "schema": {"type": "string", "enum": list(KINDS)}},
                {"name": "namespace", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json_body("ListResourcesResponse", "The live resources."),
                **_errors("400", *_AUTH_ERRORS),
            },
        }
    },
    "/api/v1/resources/{kind}/{namespace}/{name}": {
        "parameters": _RESOURCE_PARAMETERS,
        "get": {
            "operationId": "getResource",
            "x-mesh-role": "read",
            "summary": "Get one resource.",
            "responses": {
                "200": _json_body("GetResourceResponse", "The resource."),
                **_errors("400", *_AUTH_ERRORS, "404"),
            },
        },
        "delete": {
            "operationId": "deleteResource",
            "x-mesh-role": "admin",
            "summary": "Delete one resource (its history stays).",
            "parameters": [
                {
                    "name": "resourceVersion",
                    "in": "query",
                    "description": "Delete only if the resource is still at this version; otherwise 409.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                {"$ref": "#/components/parameters/dryRun"},
            ],
            "responses": {
                "200": _json_body(
                    "DeleteResourceResponse", "The deletion (or, in a dry run, what it would do)."
                ),
                **_errors("400", *_AUTH_ERRORS, "404", "409"),
            },
        },
    },
    "/api/v1/resources/{kind}/{namespace}/{name}/revisions": {
        "parameters": _RESOURCE_PARAMETERS,
        "get": {
            "operationId": "listRevisions",
            "x-mesh-role": "read",
            "summary": "Every revision of one resource, oldest first, deletions included.",
            "responses": {
                "200": _json_body("ListRevisionsResponse", "The resource's history."),
                **_errors("400", *_AUTH_ERRORS, "404"),
            },
        },
    },
    "/api/v1/resources/{kind}/{namespace}/{name}/rollback": {
        "parameters": _RESOURCE_PARAMETERS,
        "post": {
            "operationId": "rollback",
            "x-mesh-role": "admin",
            "summary": "Store an earlier revision's spec again, as a new revision (a deletion deletes).",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("RollbackRequest")}},
            },
            "responses": {
                "200": _json_body("RollbackResponse", "The rollback (or, in a dry run, what it would do)."),
                **_errors("400", *_AUTH_ERRORS, "404", "409", "413", "415"),
            },
        },
    },
    "/api/v1/sidecars": {
        "get": {
            "operationId": "listSidecars",
            "x-mesh-role": "read",
            "summary": "Every sidecar the control plane knows, with the config version it applied.",
            "responses": {
                "200": _json_body("ListSidecarsResponse", "The sidecars and the store's revision."),
                **_errors(*_AUTH_ERRORS),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "security": [],
            "responses": {
                "200": {"description": "The OpenAPI document.", "content": {"application/json": {}}}
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness: the control plane's HTTP server answers.",
            "security": [],
            "responses": {"200": _json_body("Health", "Serving.")},
        }
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "grpc-mesh control plane",
        "version": "v1",
        "description": "Policy resources (Istio's kinds) and sidecar status. The same operations are "
        "served over gRPC as mesh.v1.PolicyService. Authenticate with a bearer JWT from "
        "`meshctl token create`: role `read` may get and list, role `admin` may do everything.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerAuth": []}],
    "paths": PATHS,
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "ES256, iss grpc-mesh, aud grpc-mesh-api, claim role: read or admin.",
            }
        },
        "parameters": {
            "kind": {
                "name": "kind",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": list(KINDS)},
            },
            "namespace": {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}},
            "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            "dryRun": {
                "name": "dryRun",
                "in": "query",
                "description": "Validate and diff, store nothing.",
                "schema": {"type": "boolean", "default": False},
            },
        },
        "responses": {
            name: {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}
            for name, description in ERROR_RESPONSES.values()
        },
        "schemas": SCHEMAS,
    },
}
