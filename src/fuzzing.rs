//! The fuzz targets' bodies (`fuzz/`, run by `scripts/test` with `cargo fuzz`), here so the
//! committed corpora are replayed as plain tests too (`tests/faults.rs`). Each takes any input
//! and must return without panicking: hostile input gets an error, never a crash.

use crate::journal::StoredEvent;

/// The event codec: any bytes as the payload of any stored type and version.
pub fn event_codec(data: &[u8]) {
    const TYPES: [&str; 14] = [
        "call_recorded",
        "trial_admitted",
        "transition",
        "policy_applied",
        "call_batch",
        "snapshot",
        "call_summary",
        "gap",
        "operator_command",
        "command_request",
        "call_stats",
        "alert_delivery",
        "chain_anchor",
        "unknown",
    ];
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let event_type = TYPES[usize::from(pick) % TYPES.len()];
    let event_version = u32::from(pick >> 4) % 4;
    let _ = crate::breaker::codec::decode(event_type, event_version, payload);
    let stored = StoredEvent {
        position: 1,
        node: "app-1".into(),
        stream: "stripe".into(),
        seq: 1,
        event_type: event_type.into(),
        event_version,
        recorded_at: 0,
        payload: payload.to_vec(),
    };
    let _ = crate::journal::decode(&stored);
    let _ = crate::journal::decode_batch(&stored);
}

/// The trace parser (`breakerbox simulate`'s input).
pub fn trace_parser(data: &[u8]) {
    let _ = crate::simulate::parse(&String::from_utf8_lossy(data));
}

/// The configuration file's parser and validation.
pub fn config_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::config::Config::from_toml(
        std::path::Path::new("fuzz.toml"),
        &text,
        &std::collections::BTreeMap::new(),
    );
}

/// The duration parser (`30s`, `1h30m`, `250ms`).
pub fn duration_parser(data: &[u8]) {
    let _ = crate::duration::parse_ms(&String::from_utf8_lossy(data));
}
