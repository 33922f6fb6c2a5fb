//! HTML of the sessions page (`/sessions`): live sessions and those ended lately, with owner,
//! template, node, state, time left and endpoints. Shown to signed-in viewers only (owners
//! are people's names); a public status page says so instead.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use steward_proto::{Session, SessionState};

/// Time left like `1h 5m`, `42s`, or `expired`.
pub fn time_left(until: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (until - now).num_seconds();
    match s {
        ..=0 => "expired".into(),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

fn state_badge(s: &Session) -> Markup {
    let class = match s.state {
        SessionState::Running => "h-ready",
        SessionState::Pending => "h-stale",
        SessionState::Failed => "h-down",
        SessionState::Ended => "h-decommissioned",
    };
    html! { span class={"badge " (class)} title=[s.reason.as_deref()] { (s.state.as_str()) } }
}

/// The page: a table of sessions, live first.
pub fn page(sessions: &[Session], now: DateTime<Utc>) -> Markup {
    let live = sessions.iter().filter(|s| s.state.is_live()).count();
    html! {
        h1 { "Sessions" }
        p.muted { (live) " live, " (sessions.len() - live) " ended lately" }
        @if sessions.is_empty() {
            p.muted { "No sessions." }
        } @else {
            table.nodes #sessions {
                thead { tr { th { "Id" } th { "Owner" } th { "Template" } th { "Node" } th { "State" } th { "Time left" } th { "Endpoints" } } }
                tbody {
                    @for s in sessions.iter().filter(|s| s.state.is_live()).chain(sessions.iter().filter(|s| !s.state.is_live())) {
                        tr {
                            td { code { (s.id) } }
                            td { @if s.spare { span.muted { "spare" } } @else { (s.owner) } }
                            td { (s.template) }
                            td { a href={"/nodes/" (s.node)} { code { (s.node.get(..8).unwrap_or(&s.node)) } } }
                            td { (state_badge(s)) @if let Some(r) = &s.reason { " " span.muted { (r) } } }
                            td { @if s.state.is_live() { (time_left(s.expires_at, now)) } @else { "ended" } }
                            td { @for e in &s.endpoints { div { (e.name) ": " code { (e.address) } } } }
                        }
                    }
                }
            }
        }
    }
}

/// What a public (not signed-in) viewer sees.
pub fn sign_in() -> Markup {
    html! {
        h1 { "Sessions" }
        p.muted { "Sign in to see sessions: they name their owners." }
        a.btn href="/login?next=/sessions" { "Sign in" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_well() {
        let now = Utc::now();
        let at = |s: i64| now + chrono::Duration::seconds(s);
        let cases = [
            (-5, "expired"),
            (42, "42s"),
            (65, "1m 5s"),
            (3_900, "1h 5m"),
            (90_000, "1d 1h"),
        ];
        for (s, want) in cases {
            assert_eq!(time_left(at(s), now), want);
        }
    }
}
