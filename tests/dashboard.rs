//! The Grafana dashboard (`packaging/grafana-dashboard.json`) against a running ringlb: every
//! metric its queries name must be a family on `/metrics`, and every histogram it reads must
//! have buckets once a query went through, so that renaming a metric without the dashboard (or
//! the other way round) fails here.

mod support;

use std::collections::BTreeSet;

use support::{MariaDb, Ringlb};

/// Every `expr` in the dashboard, wherever it is nested (panels, rows, templating).
fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `ringlb_...` metric names in a query.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ringlb_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON: {e}"))
}

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard_with_a_query_in_every_panel() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "ringlb");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "duplicate id at {title:?}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expr");
            assert!(
                !metric_names(expr).is_empty(),
                "{title}: {expr:?} reads no ringlb metric"
            );
        }
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than the dashboard");
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_on_metrics() {
    let mut queries = Vec::new();
    exprs(&dashboard(), &mut queries);
    let names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(names.len() >= 20, "only {names:?}");

    let db = MariaDb::start();
    let lb = Ringlb::start(&[&db], "");
    // One query, so that the latency histograms have buckets.
    let mut conn = lb.conn();
    mysql::prelude::Queryable::query_drop(&mut conn, "SELECT 1").unwrap();
    drop(conn);
    let metrics = lb.metrics();

    let mut missing = Vec::new();
    for name in &names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        let declared = metrics.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|l| l.split_once(' '))
                .map(|(n, _)| n)
                == Some(family)
        });
        // A histogram's buckets only show with a sample; the query above made one.
        let sampled = family == name
            || metrics
                .lines()
                .any(|l| l.strip_prefix(name.as_str()).is_some_and(|l| l.starts_with('{')));
        if !declared || !sampled {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}\n{metrics}"
    );
}

#[test]
fn metric_names_are_read_out_of_queries() {
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(ringlb_backend_first_byte_seconds_bucket{a=\"b\"}[1m]))) / ringlb_x"),
        ["ringlb_backend_first_byte_seconds_bucket", "ringlb_x"]
    );
    assert!(metric_names("up").is_empty());
}
