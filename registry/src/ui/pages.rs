//! HTML of the fleet page and the login page (maud: every interpolated value is escaped).
//! The page works without JavaScript; `assets/app.js` only adds live updates.

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use steward_proto::{Event, Health};

use super::access::Viewer;
use super::view::{kind_str, Page, Row, Summary, TableQuery};

/// Asset URLs carry the crate version so browsers refetch them after an upgrade.
pub const CSS: &str = concat!("/assets/app.css?v=", env!("CARGO_PKG_VERSION"));
pub const JS: &str = concat!("/assets/app.js?v=", env!("CARGO_PKG_VERSION"));

/// Events shown on the fleet page.
pub const LAST_EVENTS: usize = 15;

/// The page around every view: header, who is signed in, the live indicator.
pub fn layout(title: &str, viewer: Option<Viewer>, stream: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Steward" }
                link rel="stylesheet" href=(CSS);
                script src=(JS) defer {}
            }
            body data-stream=[stream] {
                header.top {
                    a.brand href="/" { "Steward" }
                    span.sub { "fleet status" }
                    span #live.live title="Live updates" { "static" }
                    a.nav href="/sessions" { "Sessions" }
                    @if let Some(v) = viewer {
                        span.viewer { (v.as_str()) " view" }
                        @if v == Viewer::Public {
                            a.btn href="/login" { "Sign in" }
                        } @else {
                            form.inline method="post" action="/logout" {
                                button.btn type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Age like `12s ago`.
pub fn age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let s = (now - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// A heartbeat time that the script keeps ticking.
pub fn age_cell(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    html! {
        @match t {
            Some(t) => span.age data-ts=(t.to_rfc3339()) title=(t.to_rfc3339()) { (age(Some(t), now)) },
            None => span.age { "never" },
        }
    }
}

pub fn health_badge(h: Health) -> Markup {
    html! { span class={"badge h-" (h.as_str())} { (h.as_str()) } }
}

fn card(id: &str, label: &str, n: usize, class: &str, href: &str) -> Markup {
    html! {
        a class={"card " (class)} id=(id) href=(href) data-count=(n) {
            span.n { (n) }
            span.l { (label) }
        }
    }
}

/// The overview cards (replaced as a whole by live updates).
pub fn summary(s: &Summary) -> Markup {
    html! {
        section #summary.cards {
            (card("count-total", "nodes", s.total, "", "/"))
            (card("count-ready", "ready", s.ready, "ok", "/?health=ready"))
            (card("count-stale", "stale", s.stale, if s.stale > 0 { "warn" } else { "" }, "/?health=stale"))
            (card("count-down", "down", s.down, if s.down > 0 { "bad" } else { "" }, "/?health=down"))
            (card("count-drifted", "drifted", s.drifted, if s.drifted > 0 { "warn" } else { "" }, "/?flag=drifted"))
            a class={"card " (if s.failed_workloads > 0 { "bad" } else { "" })} id="count-failed"
                href="/?flag=failed" data-count=(s.failed_workloads) {
                span.n { (s.failed_workloads) }
                span.l { "workloads failing" @if s.failing_nodes > 0 { " on " (s.failing_nodes) " node" @if s.failing_nodes != 1 { "s" } } }
            }
        }
    }
}

/// One entry of an event list.
pub fn event_item(e: &Event) -> Markup {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    html! {
        li data-seq=(e.seq) {
            time datetime=(e.time.to_rfc3339()) { (e.time.format("%H:%M:%S")) }
            " "
            span class={"ev ev-" (kind)} { (kind) }
            @if let Some(n) = &e.node_id {
                " " a.node href={"/nodes/" (n)} { (short(n)) }
            }
            " " span.msg { (e.message) }
        }
    }
}

pub fn events(list: &[Event]) -> Markup {
    html! {
        ol #events.events {
            @for e in list.iter().rev() { (event_item(e)) }
        }
        @if list.is_empty() { p.muted { "No events yet." } }
    }
}

/// First 8 characters of an id.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// One row of the node table (also sent alone by live updates).
pub fn row(r: &Row, now: DateTime<Utc>) -> Markup {
    html! {
        tr id={"node-" (r.id)} data-id=(r.id) data-health=(r.health.as_str())
            data-drifted=(r.drifted) data-failed=(r.failed) {
            td.name {
                a href={"/nodes/" (r.id)} { (r.hostname) }
                div.id { (short(&r.id)) }
            }
            td.labels { @for (k, v) in &r.labels { span.label { (k) "=" (v) } " " } }
            td { (kind_str(r.kind)) }
            td.flags {
                (health_badge(r.health))
                @if r.drifted { " " span.badge.drifted { "drifted" } }
                @if r.failed > 0 { " " span.badge.failed { (r.failed) " failed" } }
            }
            td { (age_cell(r.last_heartbeat, now)) }
            td.num { @match r.rtt_ms { Some(ms) => { (format!("{ms:.1}")) " ms" }, None => "–" } }
            td { @if r.agent_version.is_empty() { "–" } @else { (r.agent_version) } }
            td.num class=[r.behind().then_some("behind")] title="observed / desired" {
                (r.observed) " / " (r.generation)
            }
            td.num { (r.containers) }
            td.num { (r.vms) }
            td.num { (r.payloads) }
            td class=[(!r.attest.ok()).then_some("bad")] { (r.attest.label()) }
        }
    }
}

const COLUMNS: &[(&str, &str)] = &[
    ("name", "Name"),
    ("", "Labels"),
    ("kind", "Kind"),
    ("health", "Health"),
    ("heartbeat", "Last heartbeat"),
    ("rtt", "RTT"),
    ("version", "Agent"),
    ("generation", "Generation"),
    ("containers", "Containers"),
    ("vms", "VMs"),
    ("payloads", "Payloads"),
    ("attestation", "Attestation"),
];

fn filters(q: &TableQuery, error: Option<&str>) -> Markup {
    let healths = ["", "ready", "stale", "down", "decommissioned"];
    html! {
        form.filters method="get" action="/" {
            label { "Selector " input type="text" name="selector" value=(q.selector) placeholder="role=builder,env!=dev"; }
            label { "Health "
                select name="health" {
                    @for h in healths {
                        option value=(h) selected[q.health == h] { @if h.is_empty() { "any" } @else { (h) } }
                    }
                }
            }
            label { "Flag "
                select name="flag" {
                    @for f in ["", "drifted", "failed"] {
                        option value=(f) selected[q.flag == f] { @if f.is_empty() { "any" } @else { (f) } }
                    }
                }
            }
            label { "Name " input type="search" name="q" value=(q.q) placeholder="hostname or id"; }
            @if q.sort != "name" { input type="hidden" name="sort" value=(q.sort); }
            @if q.desc { input type="hidden" name="dir" value="desc"; }
            button.btn type="submit" { "Filter" }
            a.btn.plain href="/" { "Reset" }
        }
        @if let Some(e) = error { p #query-error.error { (e) } }
    }
}

fn pager(q: &TableQuery, p: &Page) -> Markup {
    html! {
        nav.pager {
            @if p.page > 1 { a.btn.plain href=(q.href(|q| q.page = p.page - 1)) rel="prev" { "← previous" } }
            span { "page " (p.page) " of " (p.pages) " · " (p.matching) " node" @if p.matching != 1 { "s" } }
            @if p.page < p.pages { a.btn.plain href=(q.href(|q| q.page = p.page + 1)) rel="next" { "next →" } }
        }
    }
}

/// The fleet page: overview, filters, one page of the table, last events.
pub fn fleet(
    s: &Summary,
    q: &TableQuery,
    page: &Page,
    error: Option<&str>,
    last: &[Event],
    now: DateTime<Utc>,
) -> Markup {
    html! {
        (summary(s))
        section.table {
            (filters(q, error))
            (pager(q, page))
            div.scroll {
                table #nodes.nodes {
                    thead { tr {
                        @for (key, title) in COLUMNS {
                            @if key.is_empty() { th { (title) } } @else {
                                @let active = q.sort == *key;
                                th class=[active.then_some("sorted")] {
                                    a href=(q.href(|n| { n.desc = active && !q.desc; n.sort = key.to_string(); n.page = 1; })) {
                                        (title)
                                        @if active { (PreEscaped(if q.desc { " ▾" } else { " ▴" })) }
                                    }
                                }
                            }
                        }
                    } }
                    tbody { @for r in &page.rows { (row(r, now)) } }
                }
            }
            @if page.rows.is_empty() { p.muted { "No node matches." } }
            (pager(q, page))
        }
        section.recent {
            h2 { "Last events" }
            (events(last))
        }
    }
}

/// The sign-in form.
pub fn login(next: &str, error: Option<&str>, public: bool) -> Markup {
    html! {
        section.login {
            h1 { "Sign in" }
            p.muted { "Paste the registry's admin or read token. It is checked once; the browser keeps only a session cookie." }
            @if let Some(e) = error { p #login-error.error { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label { "Token " input type="password" name="token" autocomplete="current-password" required autofocus; }
                button.btn type="submit" { "Sign in" }
            }
            @if public { p { a href="/" { "Continue without signing in (public view)" } } }
        }
    }
}

/// A plain error page.
pub fn error_page(title: &str, message: &str) -> Markup {
    html! { section.login { h1 { (title) } p.error { (message) } p { a href="/" { "Back to the fleet" } } } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        let now = Utc::now();
        assert_eq!(age(None, now), "never");
        assert_eq!(age(Some(now - chrono::Duration::seconds(5)), now), "5s ago");
        assert_eq!(
            age(Some(now - chrono::Duration::seconds(125)), now),
            "2m ago"
        );
        assert_eq!(age(Some(now - chrono::Duration::hours(50)), now), "2d ago");
    }
}
