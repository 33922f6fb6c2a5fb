//! Enrollment tokens: create (shown once), list, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use steward_proto::validate::validate_labels;
use steward_proto::{
    CreateEnrollmentToken, EnrollmentTokenCreated, EnrollmentTokenInfo, EventKind,
};

use axum::response::{IntoResponse, Response};

use super::guard::AuditTarget;
use super::Doc;
use crate::auth::{self, Caller};
use crate::clock::{parse_ttl, Lifetime};
use crate::error::{ApiResult, RegistryError};
use crate::state::AppState;
use crate::store::TokenRecord;

fn info(t: &TokenRecord) -> EnrollmentTokenInfo {
    EnrollmentTokenInfo {
        id: t.id.clone(),
        description: t.description.clone(),
        labels: t.labels.clone(),
        uses_total: t.uses_total,
        uses_left: t.uses_left,
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked: t.revoked,
    }
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Doc(req): Doc<CreateEnrollmentToken>,
) -> ApiResult<Response> {
    let mut problems = validate_labels(&req.labels, "labels");
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > 1_000_000 {
        problems.push(steward_proto::Problem::new("uses", "must be 1-1000000"));
    }
    let text = req.expires_in.as_deref().unwrap_or("24h");
    let max = std::time::Duration::from_secs(366 * 86400);
    let ttl = match parse_ttl("expires_in", text, std::time::Duration::from_secs(1), max) {
        Ok(d) => Some(d),
        Err(p) => {
            problems.push(p);
            None
        }
    };
    let (Some(ttl), true) = (ttl, problems.is_empty()) else {
        return Err(RegistryError::Invalid(problems));
    };
    let id = auth::new_id();
    let token = auth::new_secret(&id);
    let now = state.clock.now();
    let rec = TokenRecord {
        id: id.clone(),
        secret_sha256: auth::sha256(&token),
        description: req.description,
        labels: req.labels,
        uses_total: uses,
        uses_left: uses,
        created_at: now,
        expires_at: Lifetime::starting(now, Some(ttl)).0.unwrap_or(now),
        revoked: false,
    };
    state.store.put_token(&rec).await?;
    state
        .event_log
        .record(
            EventKind::TokenCreated,
            None,
            None,
            &caller.actor(),
            format!(
                "enrollment token {id} created ({uses} use(s), expires {})",
                rec.expires_at
            ),
        )
        .await?;
    let mut resp = (
        StatusCode::CREATED,
        Json(EnrollmentTokenCreated {
            token,
            info: info(&rec),
        }),
    )
        .into_response();
    resp.extensions_mut()
        .insert(AuditTarget(format!("enrollment-token/{id}")));
    Ok(resp)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<EnrollmentTokenInfo>>> {
    let mut v: Vec<_> = state
        .store
        .tokens()
        .await?
        .iter()
        .filter(|t| caller.sees(&t.labels))
        .map(info)
        .collect();
    v.sort_by_key(|t| t.created_at);
    Ok(Json(v))
}

pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<EnrollmentTokenInfo>> {
    let mut rec =
        state.store.token(&id).await?.ok_or_else(|| {
            RegistryError::NotFound(format!("no enrollment token with id {id:?}"))
        })?;
    if !rec.revoked {
        rec.revoked = true;
        state.store.put_token(&rec).await?;
        state
            .event_log
            .record(
                EventKind::TokenRevoked,
                None,
                None,
                &caller.actor(),
                format!("enrollment token {id} revoked"),
            )
            .await?;
    }
    Ok(Json(info(&rec)))
}
