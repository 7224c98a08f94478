//! The Grafana dashboard (`packaging/grafana-dashboard.json`) against a running ringlb (with a
//! writer and a reader pool, and the HA families as a node with `[ha]` renders them): every
//! metric its queries name must have samples on `/metrics`, and every label they select on or
//! group by, and every literal label value, must be on those samples; so renaming a metric, a
//! label or a value without the dashboard (or the other way round) fails here.

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

/// Every target's (expr, legendFormat).
fn legends(value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            if let (Some(expr), Some(legend)) = (map.get("expr"), map.get("legendFormat")) {
                out.push((
                    expr.as_str().unwrap_or_default().to_string(),
                    legend.as_str().unwrap_or_default().to_string(),
                ));
            }
            map.values().for_each(|v| legends(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| legends(v, out)),
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

/// The label matchers right after each metric name in a query: (metric, label, operator, value).
fn matchers(expr: &str) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for name in metric_names(expr) {
        let mut rest = expr;
        while let Some(at) = rest.find(name.as_str()) {
            rest = &rest[at + name.len()..];
            // Only where this is the whole name, followed by a selector.
            let Some(selector) = rest.strip_prefix('{') else {
                continue;
            };
            let Some((inside, _)) = selector.split_once('}') else {
                break;
            };
            for matcher in inside.split(',').filter(|m| !m.trim().is_empty()) {
                let op_at = matcher.find(['=', '!']).expect("a matcher operator");
                let (label, tail) = matcher.split_at(op_at);
                let op: String = tail.chars().take_while(|c| "=!~".contains(*c)).collect();
                let value = tail[op.len()..].trim().trim_matches('"').to_string();
                out.push((name.clone(), label.trim().to_string(), op, value));
            }
        }
    }
    out
}

/// The labels of every `by (...)` clause in a query.
fn by_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        rest = &rest[at + 4..];
        let (inside, _) = rest.split_once(')').expect("a closing parenthesis");
        out.extend(inside.split(',').map(|l| l.trim().to_string()));
    }
    out
}

/// The sample lines of `name` (exactly that name) in an exposition.
fn samples<'a>(metrics: &'a str, name: &str) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .collect()
}

#[test]
fn every_metric_label_and_value_the_dashboard_queries_is_on_metrics() {
    let mut queries = Vec::new();
    exprs(&dashboard(), &mut queries);
    let names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(names.len() >= 20, "only {names:?}");

    // A writer and a reader pool over one server, so that the role families have samples.
    let db = MariaDb::start();
    let server = db.addr();
    let lb = Ringlb::start_with_file(move |listen, admin| {
        format!(
            "[global]\nadmin = \"{admin}\"\n[health]\ncheck = \"mysql\"\nuser = \"ringlb_check\"\n\
             interval_ms = 100\n\n\
             [[listener]]\nname = \"rw\"\nbind = \"{listen}\"\nrole = \"writer\"\n\
             [[listener.backend]]\naddress = \"{server}\"\n\n\
             [[listener]]\nname = \"ro\"\nbind = \"127.0.0.1:{}\"\nrole = \"reader\"\n\
             [[listener.backend]]\naddress = \"{server}\"\n",
            support::free_port()
        )
    });
    // One query, so that the latency histograms have buckets.
    support::wait_until(std::time::Duration::from_secs(20), "a writer", || {
        lb.stats_json()["listeners"][0]["writer"].is_string()
    });
    let mut conn = lb.conn();
    mysql::prelude::Queryable::query_drop(&mut conn, "SELECT 1").unwrap();
    drop(conn);
    let mut metrics = lb.metrics();
    // The HA families as a node with [ha] renders them (the same function serves /metrics).
    ringlb::admin::metrics::render_ha(
        &mut metrics,
        &ringlb::ha::status::HaStatus {
            enabled: true,
            node: "lb-db-01".into(),
            role: "active".into(),
            vip: "10.0.0.100/24".into(),
            vip_held: true,
            healthy: true,
            peers: vec![ringlb::ha::status::PeerStatus {
                address: "10.0.0.12:694".into(),
                node: "lb-db-02".into(),
                state: "alive".into(),
                role: "standby".into(),
                last_heartbeat_age_ms: Some(50),
            }],
            takeovers: 1,
            dropped: Default::default(),
        },
    );

    let mut missing = Vec::new();
    // A replica's lag: this server is no replica, so the family is declared without samples.
    let unsampled = ["ringlb_backend_replication_lag_seconds"];
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
        let sampled = !samples(&metrics, name).is_empty();
        if !declared || (!sampled && !unsampled.contains(&name.as_str())) {
            missing.push(format!("{name} (declared {declared}, sampled {sampled})"));
        }
    }
    // Labels: what Prometheus adds (instance) and what histograms have (le) aside, every label a
    // query selects on or groups by is on a sample of its metric, and every literal value too.
    for query in &queries {
        let names = metric_names(query);
        let has_label = |label: &str| {
            label == "instance"
                || label == "le"
                || names
                    .iter()
                    .flat_map(|n| samples(&metrics, n))
                    .any(|l| l.contains(&format!("{label}=\"")))
        };
        for label in by_labels(query) {
            if !has_label(&label) && !names.iter().all(|n| unsampled.contains(&n.as_str())) {
                missing.push(format!("label {label} in {query}"));
            }
        }
        for (name, label, op, value) in matchers(query) {
            if unsampled.contains(&name.as_str()) || label == "instance" {
                continue;
            }
            let lines = samples(&metrics, &name);
            let found = if op == "=" && !value.contains('$') {
                lines.iter().any(|l| l.contains(&format!("{label}=\"{value}\"")))
            } else {
                lines.iter().any(|l| l.contains(&format!("{label}=\"")))
            };
            if !found {
                missing.push(format!("{name}{{{label}{op}\"{value}\"}} in {query}"));
            }
        }
    }
    // Legends: each {{label}} is one the query's result keeps (grouped by, or on its samples).
    let mut targets = Vec::new();
    legends(&dashboard(), &mut targets);
    for (expr, legend) in &targets {
        let names = metric_names(expr);
        let grouped = by_labels(expr);
        let mut rest = legend.as_str();
        while let Some(at) = rest.find("{{") {
            let Some((label, after)) = rest[at + 2..].split_once("}}") else {
                break;
            };
            rest = after;
            let kept = if grouped.is_empty() {
                names
                    .iter()
                    .flat_map(|n| samples(&metrics, n))
                    .any(|l| l.contains(&format!("{label}=\"")))
                    || names.iter().all(|n| unsampled.contains(&n.as_str()))
            } else {
                grouped.iter().any(|g| g == label)
            };
            if !kept {
                missing.push(format!("legend {{{{{label}}}}} of {expr}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries what /metrics does not have:\n{}\n\n{metrics}",
        missing.join("\n")
    );
}

#[test]
fn matchers_and_groupings_are_read_out_of_queries() {
    let query = "sum by (le, backend) (rate(ringlb_backend_bytes_total{instance=~\"$instance\",direction=\"to_backend\"}[1m]))";
    assert_eq!(by_labels(query), ["le", "backend"]);
    assert_eq!(
        matchers(query),
        [
            (
                "ringlb_backend_bytes_total".to_string(),
                "instance".to_string(),
                "=~".to_string(),
                "$instance".to_string()
            ),
            (
                "ringlb_backend_bytes_total".into(),
                "direction".into(),
                "=".into(),
                "to_backend".into()
            ),
        ]
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
