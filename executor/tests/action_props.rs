//! Property tests (proptest) for the action parser: any JSON or YAML document decodes to an
//! action or an error naming a field, never a panic; a decoded action encodes and decodes
//! back to itself. Bounded for CI by `PROPTEST_CASES` (default below).

use executor::Action;
use proptest::prelude::*;
use serde_json::{json, Value};

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const KEYS: &[&str] = &[
    "download",
    "upload",
    "run",
    "timeout",
    "emit_progress",
    "try",
    "parallel",
    "serial",
    "codependent",
    "action",
    "actions",
    "path",
    "args",
    "user",
    "from",
    "to",
    "cache_key",
    "timeout_ms",
    "env",
    "name",
    "value",
    "resource_limits",
    "nofile",
    "start_message",
    "success_message",
    "failure_message_prefix",
    "log_source",
    "suppress_log_output",
    "artifact",
    "checksum_algorithm",
    "checksum_value",
    "dir",
];

/// Arbitrary JSON shaped like action trees: envelopes and their field names.
fn doc() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        "\\PC{0,10}".prop_map(Value::String),
        Just(json!("/bin/sh")),
        Just(json!("root")),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(KEYS).prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid action tree to start from.
fn valid() -> impl Strategy<Value = Value> {
    let run = (
        "\\PC{1,8}",
        prop::collection::vec("\\PC{0,6}", 0..3),
        "[a-z]{1,6}",
    )
        .prop_map(|(path, args, user)| json!({"run": {"path": path, "args": args, "user": user}}));
    run.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            (inner.clone(), 1u64..1_000_000)
                .prop_map(|(a, t)| json!({"timeout": {"action": a, "timeout_ms": t}})),
            inner.clone().prop_map(|a| json!({"try": {"action": a}})),
            prop::collection::vec(inner.clone(), 1..3)
                .prop_map(|a| json!({"serial": {"actions": a}})),
            prop::collection::vec(inner.clone(), 1..3)
                .prop_map(|a| json!({"parallel": {"actions": a}})),
            prop::collection::vec(inner, 1..3).prop_map(|a| json!({"codependent": {"actions": a}})),
        ]
    })
}

fn round_trips(action: &Action) -> Result<(), TestCaseError> {
    let text = serde_json::to_string(action).expect("an action encodes");
    let back = Action::from_json(&text)
        .map_err(|e| TestCaseError::fail(format!("{text} does not decode: {e}")))?;
    prop_assert_eq!(&back, action);
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_documents_never_panic(v in doc()) {
        if let Ok(action) = Action::parse_value(&v) {
            round_trips(&action)?;
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = Action::from_json(&text);
        let _ = Action::from_yaml(&text);
    }

    #[test]
    fn valid_trees_round_trip(v in valid()) {
        let action = Action::parse_value(&v).map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
        round_trips(&action)?;
    }

    #[test]
    fn edited_valid_trees_never_panic(v in valid(), edit in doc(), at in any::<prop::sample::Index>()) {
        // Replace one field somewhere in a valid tree with arbitrary JSON.
        let mut v = v;
        let mut paths = Vec::new();
        collect(&v, &mut Vec::new(), &mut paths);
        if !paths.is_empty() {
            let path = &paths[at.index(paths.len())];
            if let Some(slot) = v.pointer_mut(path) {
                *slot = edit;
            }
        }
        if let Ok(action) = Action::parse_value(&v) {
            round_trips(&action)?;
        }
    }
}

/// JSON pointers of every value in `v`.
fn collect(v: &Value, at: &mut Vec<String>, out: &mut Vec<String>) {
    out.push(at.iter().map(|s| format!("/{s}")).collect());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(k.replace('~', "~0").replace('/', "~1"));
                collect(child, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                at.push(i.to_string());
                collect(child, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}
