//! The OpenAPI 3 document, generated from the route table so it always lists every route.

use serde_json::{json, Map, Value};

use crate::auth::Access;

fn schema_ref(name: &str) -> Value {
    match name.strip_suffix("[]") {
        Some(item) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}})
        }
        None => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut schemas: Map<String, Value> = crate::schemas::all();
    for r in super::routes() {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        op.insert(
            "operationId".into(),
            json!(format!("{} {}", r.method, r.path)),
        );
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if let Some(req) = r.request {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {
                    "application/json": {"schema": schema_ref(req)},
                    "application/yaml": {"schema": schema_ref(req)}
                }}),
            );
        }
        let mut responses = Map::new();
        let ok = match r.response {
            Some(resp) => {
                json!({"description": "success", "content": {"application/json": {"schema": schema_ref(resp)}}})
            }
            None => json!({"description": "success"}),
        };
        responses.insert("200".into(), ok);
        let err = json!({"description": "error", "content": {"application/json": {"schema": schema_ref("ApiError")}}});
        responses.insert("400".into(), err.clone());
        if r.access != Access::Public {
            responses.insert("401".into(), err.clone());
            responses.insert("403".into(), err.clone());
            op.insert("security".into(), json!([{"bearer": []}]));
        }
        // The store out of disk space (507) or unable to write (503); /readyz says so (503).
        if r.method != axum::http::Method::GET {
            responses.insert("503".into(), err.clone());
            responses.insert("507".into(), err.clone());
        } else if r.path == "/readyz" {
            responses.insert(
                "503".into(),
                json!({"description": "the store cannot write"}),
            );
        }
        op.insert("x-steward-access".into(), json!(r.access.describe()));
        op.insert("responses".into(), Value::Object(responses));
        let path_item = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = path_item {
            m.insert(r.method.as_str().to_ascii_lowercase(), Value::Object(op));
        }
    }
    schemas
        .entry("ApiError".to_string())
        .or_insert(json!({"type": "object"}));
    json!({
        "openapi": "3.0.3",
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
