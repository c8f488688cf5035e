//! Property tests (proptest) for what parses client bytes: the chunked decoder, the route
//! parser and the JSON specs. Bounded for CI: each property runs `PROPTEST_CASES` cases
//! (default below), a few seconds in all.

use bytes::BytesMut;
use garden_api::chunked::{encode_chunk, ChunkedDecoder, Decoded, LAST_CHUNK};
use garden_api::routes::Route;
use garden_api::{ContainerSpec, NetOutRule, ProcessSpec};
use proptest::prelude::*;

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

/// Feed `input` in pieces of the given sizes (cycled); the body, or the error.
fn decode(input: &[u8], pieces: &[usize]) -> Result<Vec<u8>, String> {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut rest = input;
    let mut sizes = pieces.iter().cycle();
    loop {
        match dec.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::Done => return Ok(body),
            Decoded::NeedMore if rest.is_empty() => return Err("eof".into()),
            Decoded::NeedMore => {
                let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
}

fn pieces() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..64, 1..8)
}

/// Routes with exactly one `:handle` parameter and nothing else variable.
const HANDLE_ROUTES: &[Route] = &[
    Route::Info,
    Route::Destroy,
    Route::Stop,
    Route::StreamIn,
    Route::StreamOut,
    Route::CurrentBandwidthLimits,
    Route::CurrentCpuLimits,
    Route::CurrentDiskLimits,
    Route::CurrentMemoryLimits,
    Route::NetIn,
    Route::NetOut,
    Route::BulkNetOut,
    Route::Run,
    Route::SetGraceTime,
    Route::Properties,
    Route::Metrics,
];

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn chunked_bodies_round_trip(
        parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..400), 0..6),
        split in pieces(),
    ) {
        let mut wire: Vec<u8> = parts.iter().flat_map(|p| encode_chunk(p)).collect();
        wire.extend_from_slice(LAST_CHUNK);
        prop_assert_eq!(decode(&wire, &split), Ok(parts.concat()));
    }

    #[test]
    fn chunked_decoder_never_panics(noise in prop::collection::vec(any::<u8>(), 0..512), split in pieces()) {
        let _ = decode(&noise, &split);
    }

    #[test]
    fn chunked_decoder_survives_edits(
        parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 1..4),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        split in pieces(),
    ) {
        let mut wire: Vec<u8> = parts.iter().flat_map(|p| encode_chunk(p)).collect();
        wire.extend_from_slice(LAST_CHUNK);
        let i = at.index(wire.len());
        wire[i] = byte;
        let _ = decode(&wire, &split);
    }

    #[test]
    fn route_parser_never_panics(method in "[A-Za-z]{0,8}|\\PC{0,4}", target in "\\PC{0,80}") {
        let _ = Route::recognize(&method, &target);
    }

    #[test]
    fn built_paths_are_recognized(
        route in prop::sample::select(HANDLE_ROUTES),
        handle in "\\PC{1,24}",
        pid in "[^/]{1,12}",
        key in "\\PC{1,16}",
    ) {
        prop_assume!(handle != "bulk_info" && handle != "bulk_metrics");
        let path = route.path(&[&handle]);
        let m = Route::recognize(route.method(), &path).expect("a built path matches");
        prop_assert_eq!(m.route, route);
        prop_assert_eq!(&m.handle, &handle);

        let path = Route::Attach.path(&[&handle, &pid]);
        let m = Route::recognize("GET", &path).expect("attach matches");
        prop_assert_eq!((m.route, &m.handle, &m.pid), (Route::Attach, &handle, &pid));

        let path = Route::Property.path(&[&handle, &key]);
        let m = Route::recognize("GET", &path).expect("property matches");
        prop_assert_eq!((m.route, &m.handle, &m.key), (Route::Property, &handle, &key));
    }

    #[test]
    fn json_specs_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<ContainerSpec>(&body);
        let _ = serde_json::from_slice::<ProcessSpec>(&body);
        let _ = serde_json::from_slice::<NetOutRule>(&body);
    }

    #[test]
    fn json_shaped_specs_never_panic(body in json_value()) {
        let text = body.to_string();
        for wrapped in [
            text.clone(),
            format!(r#"{{"handle":"h","limits":{text},"properties":{text},"netin":[{text}]}}"#),
            format!(r#"{{"path":"sh","args":{text},"rlimits":{text},"limits":{text},"tty":{text}}}"#),
            format!(r#"{{"protocol":{text},"networks":[{text}],"ports":{text},"icmps":{text}}}"#),
        ] {
            let _ = serde_json::from_str::<ContainerSpec>(&wrapped);
            let _ = serde_json::from_str::<ProcessSpec>(&wrapped);
            let _ = serde_json::from_str::<NetOutRule>(&wrapped);
        }
    }

    #[test]
    fn decoded_specs_round_trip(body in json_value()) {
        let text = format!(r#"{{"handle":"h","limits":{body},"env":["A=1"]}}"#);
        if let Ok(spec) = serde_json::from_str::<ContainerSpec>(&text) {
            let again = serde_json::to_string(&spec).expect("encodes");
            let back: ContainerSpec = serde_json::from_str(&again).expect("decodes what it encoded");
            prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&spec).unwrap());
        }
    }
}

/// Arbitrary JSON, biased towards the numbers and names the specs use.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let key = prop_oneof![
            Just("memory_limits".to_string()),
            Just("limit_in_bytes".to_string()),
            Just("disk_limits".to_string()),
            Just("byte_hard".to_string()),
            Just("pid_limits".to_string()),
            Just("max".to_string()),
            Just("cpu_limits".to_string()),
            Just("window_size".to_string()),
            Just("nofile".to_string()),
            Just("start".to_string()),
            Just("end".to_string()),
            "[a-z_]{1,10}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
