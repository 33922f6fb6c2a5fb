//! The OpenAPI 3.1 document, generated from the route table so it always lists every route and
//! every status each route can answer.

use axum::http::Method;
use serde_json::{json, Map, Value};
use steward_proto::patterns;

use super::Route;
use crate::auth::Access;

/// `Route::request` of a route whose body is raw bytes, streamed (payload uploads): no
/// body-size limit applies to it.
pub const RAW_BODY: &str = "(bytes)";

fn schema_ref(name: &str) -> Value {
    match name.strip_suffix("[]") {
        Some(item) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}})
        }
        None => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

/// Every status `r` can answer: its own (`Route::statuses`) plus the ones shared by every route
/// of its kind — 401/403 where a credential is needed, 400/413 where a parsed body is read
/// (413 over `max_body_bytes`), and 507 on every write (the store's disk is full).
pub fn statuses(r: &Route) -> Vec<u16> {
    let mut v = r.statuses.to_vec();
    if r.access != Access::Public {
        v.extend([401, 403]);
    }
    if r.request.is_some_and(|b| b != RAW_BODY) {
        v.extend([400, 413]);
    }
    // A write may find the store's disk full (507); anything touching the store may find it
    // unable to write or being reopened after an I/O error (503), and /readyz says so.
    if r.method != Method::GET {
        v.push(507);
    }
    if r.method != Method::GET || r.access != Access::Public || r.path == "/readyz" {
        v.push(503);
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn describe(status: u16) -> &'static str {
    match status {
        200 => "success",
        201 => "created",
        204 => "stored; no content",
        206 => "partial content (Range)",
        304 => "nothing newer arrived during the wait",
        400 => "invalid input (the problems name each field)",
        401 => "missing or unknown credential",
        403 => "this credential may not use this route (or enrolment refused)",
        404 => "not found",
        409 => "conflicts with the current state",
        412 => "If-Match does not match the current generation",
        413 => "request body larger than max_body_bytes (or a limit of the registry)",
        416 => "range not satisfiable",
        422 => "refers to something missing or not matching (e.g. a payload version)",
        503 => "the store cannot write or is being reopened (not ready)",
        507 => "the registry's store is full (no space left in its data dir)",
        _ => "see docs/API.md",
    }
}

fn responses(r: &Route) -> Map<String, Value> {
    let mut out = Map::new();
    for st in statuses(r) {
        let mut resp = json!({"description": describe(st)});
        let schema = match (st, r.response) {
            (200 | 201, Some(name)) => Some(schema_ref(name)),
            (400.., _) => Some(schema_ref("ApiError")),
            _ => None,
        };
        if let Some(schema) = schema {
            resp["content"] = json!({"application/json": {"schema": schema}});
        }
        out.insert(st.to_string(), resp);
    }
    out
}

fn pattern(p: impl Into<String>) -> Value {
    json!({"type": "string", "pattern": p.into()})
}

/// Path parameters, with the constraints the server checks.
fn path_params(r: &Route) -> Vec<Value> {
    let segs: Vec<&str> = r.path.split('/').collect();
    segs.iter()
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| {
            let schema = match p {
                "sha256" => pattern(patterns::SHA256),
                "version" => pattern(patterns::PAYLOAD_VERSION),
                "name" if segs.contains(&"workloads") => pattern(patterns::WORKLOAD_NAME),
                "name" => pattern(patterns::RESOURCE_NAME),
                _ => json!({"type": "string"}),
            };
            json!({"name": p, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema,
           "description": description})
}

fn header(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "schema": schema,
           "description": description})
}

/// Query and header parameters the handlers read.
fn other_params(r: &Route) -> Vec<Value> {
    let string = || json!({"type": "string"});
    let seq = || json!({"type": "integer", "minimum": 0});
    match (r.method.as_str(), r.path) {
        ("GET", "/v1/nodes") => vec![
            query(
                "selector",
                string(),
                "label selector, e.g. role=web,env!=dev",
            ),
            query("health", string(), "comma-separated healths, e.g. up,stale"),
            query(
                "drifted",
                json!({"type": "string", "enum": ["true", "false"]}),
                "drift in the last status",
            ),
        ],
        ("GET", "/v1/nodes/{id}/spec") => vec![
            query(
                "after",
                seq(),
                "answer only once the generation is newer than this",
            ),
            query(
                "wait",
                string(),
                "long-poll up to this long, e.g. 30s (at most max_wait)",
            ),
        ],
        ("PUT", "/v1/nodes/{id}/spec") => vec![header(
            "If-Match",
            pattern(r#"^"?[0-9]+"?$"#),
            "write only if the generation is still this one",
        )],
        ("GET", "/v1/events") => vec![
            query("after", seq(), "events after this sequence number"),
            query(
                "limit",
                json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                "at most this many (default 100)",
            ),
            query("node", string(), "only this node's events"),
        ],
        ("POST", "/v1/nodes/{id}/workloads/{name}/reset") => vec![query(
            "kind",
            json!({"type": "string", "enum": steward_proto::WorkloadKind::ALL.map(|k| k.as_str())}),
            "reset only the workload of this kind (default: every workload of that name)",
        )],
        ("GET", "/v1/events/stream") => vec![query(
            "after",
            seq(),
            "replay events after this sequence number",
        )],
        ("PUT", "/v1/payloads/{name}/{version}") => vec![header(
            super::payloads::SHA256_HEADER,
            pattern(patterns::SHA256),
            "the sha256 the content must have",
        )],
        _ => vec![],
    }
}

fn request_body(name: &str) -> Value {
    if name == RAW_BODY {
        return json!({"required": true, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
        }});
    }
    json!({"required": true, "content": {
        "application/json": {"schema": schema_ref(name)},
        "application/yaml": {"schema": schema_ref(name)}
    }})
}

fn operation(r: &Route) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(r.summary));
    op.insert(
        "operationId".into(),
        json!(format!("{} {}", r.method, r.path)),
    );
    let mut params = path_params(r);
    params.extend(other_params(r));
    if !params.is_empty() {
        op.insert("parameters".into(), json!(params));
    }
    if let Some(req) = r.request {
        op.insert("requestBody".into(), request_body(req));
    }
    if r.access != Access::Public {
        op.insert("security".into(), json!([{"bearer": []}]));
    }
    op.insert("x-steward-access".into(), json!(r.access.describe()));
    op.insert("responses".into(), Value::Object(responses(r)));
    Value::Object(op)
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut schemas: Map<String, Value> = crate::schemas::all();
    for r in super::routes() {
        let path_item = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = path_item {
            m.insert(r.method.as_str().to_ascii_lowercase(), operation(&r));
        }
    }
    schemas
        .entry("ApiError".to_string())
        .or_insert(json!({"type": "object"}));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Steward registry API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Desired state, enrolment, heartbeats and events of a Steward fleet. See docs/API.md."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas
        }
    })
}
