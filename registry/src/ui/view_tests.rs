//! Tests of the status page's rows, summary and table (`view.rs`).

use super::*;

/// Filters, sorts and cuts `rows` to the page asked for, row by row: the reference that
/// [`fleet_table`]'s one pass is checked against.
fn table(mut rows: Vec<Row>, q: &TableQuery) -> Result<Page, BadQuery> {
    let filter = Filter::parse(q)?;
    rows.retain(|r| filter.keeps(r, &r.labels));
    Ok(page_of(rows, q))
}

impl Summary {
    /// The overview of these rows.
    fn of(rows: &[Row]) -> Summary {
        let mut s = Summary::default();
        for r in rows {
            s.add(r.health, r.drifted, r.failed);
        }
        s
    }
}

fn row(name: &str, health: Health, failed: usize, drifted: bool) -> Row {
    Row {
        id: format!("id-{name}"),
        hostname: name.into(),
        labels: [("role".to_string(), name[..1].to_string())].into(),
        kind: NodeKind::Vm,
        health,
        last_heartbeat: None,
        rtt_ms: None,
        agent_version: "0.1.0".into(),
        generation: 2,
        observed: 1,
        containers: failed,
        vms: 0,
        payloads: 0,
        failed,
        drifted,
        attest: Attest::default(),
    }
}

#[test]
fn filter_sort_page() {
    let rows = vec![
        row("b1", Health::Ready, 0, false),
        row("a1", Health::Stale, 2, false),
        row("a2", Health::Ready, 0, true),
        row("c1", Health::Down, 0, false),
    ];
    let s = Summary::of(&rows);
    assert_eq!((s.ready, s.stale, s.down, s.drifted), (2, 1, 1, 1));
    assert_eq!((s.failed_workloads, s.failing_nodes), (2, 1));
    let q = |p: &[(&str, &str)]| {
        TableQuery::from_params(
            &p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let names = |p: Page| p.rows.into_iter().map(|r| r.hostname).collect::<Vec<_>>();
    assert_eq!(
        names(table(rows.clone(), &q(&[])).unwrap()),
        ["a1", "a2", "b1", "c1"]
    );
    assert_eq!(
        names(table(rows.clone(), &q(&[("selector", "role=a")])).unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(
        names(table(rows.clone(), &q(&[("health", "ready")])).unwrap()),
        ["a2", "b1"]
    );
    assert_eq!(
        names(table(rows.clone(), &q(&[("flag", "drifted")])).unwrap()),
        ["a2"]
    );
    assert_eq!(
        names(table(rows.clone(), &q(&[("q", "B")])).unwrap()),
        ["b1"]
    );
    assert_eq!(
        names(table(rows.clone(), &q(&[("sort", "containers"), ("dir", "desc")])).unwrap()),
        ["a1", "a2", "b1", "c1"]
    );
    let p = table(rows.clone(), &q(&[("per_page", "10"), ("page", "9")])).unwrap();
    assert_eq!((p.page, p.pages, p.matching), (1, 1, 4));
    assert_eq!(
        table(rows.clone(), &q(&[("health", "sick")]))
            .unwrap_err()
            .field,
        "health"
    );
    assert_eq!(
        table(rows, &q(&[("selector", "a b")])).unwrap_err().field,
        "selector"
    );
    assert_eq!(
        q(&[("q", "<x y>"), ("sort", "rtt")]).href(|q| q.page = 2),
        "/?q=%3Cx%20y%3E&sort=rtt&page=2"
    );
}

/// The one-pass table of the fleet view (`fleet_table`).
mod fleet_table {
    use super::*;
    use crate::store::NodeRecord;

    /// 60 nodes: hostnames in another order than ids, two roles, three healths.
    fn fleet() -> Fleet {
        let fleet = Fleet::default();
        for i in 0..60 {
            let mut rec = NodeRecord::test(&format!("id-{i:02}"));
            rec.facts.hostname = format!("host-{:02}", (i * 7) % 60);
            rec.labels
                .insert("role".into(), if i % 2 == 0 { "a" } else { "b" }.into());
            rec.health = [Health::Ready, Health::Stale, Health::Down][i % 3];
            fleet.insert_live(&rec, Some(1));
        }
        fleet
    }

    fn q(p: &[(&str, &str)]) -> TableQuery {
        let p = p.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        TableQuery::from_params(&p.collect())
    }

    /// The one-pass table of the fleet view is the table of every node's full row.
    #[test]
    fn the_fleet_table_is_the_table_of_every_row_with_labels_on_its_page() {
        let fleet = fleet();
        let mut every = Vec::new();
        fleet.for_each(|id, ln| every.push(Row::from_live(id, ln)));
        let shown = |p: &Page| -> Vec<(String, String, Labels)> {
            let rows = p.rows.iter();
            rows.map(|r| (r.id.clone(), r.hostname.clone(), r.labels.clone()))
                .collect()
        };
        for params in [
            vec![],
            vec![("per_page", "10"), ("page", "3")],
            vec![("per_page", "10"), ("page", "99")],
            vec![("selector", "role=b"), ("sort", "health"), ("dir", "desc")],
            vec![("health", "stale,down"), ("q", "HOST-1")],
            vec![("selector", "role=c")],
        ] {
            let query = q(&params);
            let (summary, page) = fleet_table(&fleet, &query);
            let want = table(every.clone(), &query).unwrap();
            let page = page.unwrap();
            assert_eq!(shown(&page), shown(&want), "{params:?}");
            assert_eq!(
                (page.matching, page.page, page.pages),
                (want.matching, want.page, want.pages)
            );
            assert_eq!(summary, Summary::of(&every), "{params:?}");
            assert!(
                page.rows.iter().all(|r| r.labels.contains_key("role")),
                "{params:?}"
            );
        }
        assert!(!shown(&fleet_table(&fleet, &q(&[])).1.unwrap()).is_empty());
    }

    #[test]
    fn a_bad_filter_names_its_field_and_still_gives_the_summary() {
        let fleet = fleet();
        for (params, field) in [
            (vec![("selector", "role in (")], "selector"),
            (vec![("health", "sick")], "health"),
            (vec![("flag", "odd")], "flag"),
        ] {
            let (summary, page) = fleet_table(&fleet, &q(&params));
            assert_eq!(page.unwrap_err().field, field);
            assert_eq!(summary.total, 60);
        }
    }
}
