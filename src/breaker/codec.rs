//! Events as bytes: MessagePack maps (`rmp_serde::to_vec_named`), with the event's type and
//! version kept beside the payload (in the journal's columns), so old bytes stay readable when a
//! type grows fields (new fields are `#[serde(default)]`) and a new version gets its own decoder.

use super::event::{CallRecorded, Event, PolicyApplied, Transition, TrialAdmitted};
use thiserror::Error;

/// Current version of every event type. Bump one when its payload changes incompatibly, and
/// keep a decoder (and a fixture in `tests/fixtures/`) for the old version.
pub const EVENT_VERSION: u32 = 1;

/// Event type names as stored in the journal's `event_type` column.
pub mod types {
    /// [`crate::breaker::Event::CallRecorded`].
    pub const CALL_RECORDED: &str = "call_recorded";
    /// [`crate::breaker::Event::TrialAdmitted`].
    pub const TRIAL_ADMITTED: &str = "trial_admitted";
    /// [`crate::breaker::Event::Transitioned`].
    pub const TRANSITION: &str = "transition";
    /// [`crate::breaker::Event::PolicyApplied`].
    pub const POLICY_APPLIED: &str = "policy_applied";
}

/// An event ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// One of [`types`].
    pub event_type: &'static str,
    /// The payload's version.
    pub event_version: u32,
    /// The MessagePack map.
    pub payload: Vec<u8>,
}

/// Bytes that are not an event this build can read.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// Written by a newer build, or not an event at all: skip it or upgrade; never guess.
    #[error("unknown event type {event_type:?}")]
    UnknownType {
        /// The type found.
        event_type: String,
    },
    /// A version this build has no decoder for (written by a newer build): upgrade to read it.
    #[error("event type {event_type:?} has no decoder for version {event_version}")]
    UnknownVersion {
        /// The type.
        event_type: String,
        /// The version found.
        event_version: u32,
    },
    /// Corrupt or truncated bytes: report the log position; the log itself needs inspection.
    #[error("event {event_type:?} v{event_version}: malformed payload: {source}")]
    Malformed {
        /// The type.
        event_type: String,
        /// The version.
        event_version: u32,
        /// What the decoder said.
        #[source]
        source: rmp_serde::decode::Error,
    },
}

/// The type name an event is stored under.
pub fn encode_type(event: &Event) -> &'static str {
    match event {
        Event::CallRecorded(_) => types::CALL_RECORDED,
        Event::TrialAdmitted(_) => types::TRIAL_ADMITTED,
        Event::Transitioned(_) => types::TRANSITION,
        Event::PolicyApplied(_) => types::POLICY_APPLIED,
    }
}

/// Is this one of the core's event types?
pub fn is_core_type(event_type: &str) -> bool {
    KNOWN.contains(&event_type)
}

const KNOWN: [&str; 4] = [
    types::CALL_RECORDED,
    types::TRIAL_ADMITTED,
    types::TRANSITION,
    types::POLICY_APPLIED,
];

/// Encodes an event. Encoding plain data to a `Vec` cannot fail; a failure would be a bug in a
/// `Serialize` impl, so it panics with the event type.
pub fn encode(event: &Event) -> Encoded {
    let event_type = encode_type(event);
    let payload = match event {
        Event::CallRecorded(e) => rmp_serde::to_vec_named(e),
        Event::TrialAdmitted(e) => rmp_serde::to_vec_named(e),
        Event::Transitioned(e) => rmp_serde::to_vec_named(e),
        Event::PolicyApplied(e) => rmp_serde::to_vec_named(e),
    };
    Encoded {
        event_type,
        event_version: EVENT_VERSION,
        payload: payload.unwrap_or_else(|e| panic!("encoding a {event_type} event: {e}")),
    }
}

/// Decodes an event. Bad bytes give an error, never a panic.
pub fn decode(event_type: &str, event_version: u32, payload: &[u8]) -> Result<Event, DecodeError> {
    fn read<T: serde::de::DeserializeOwned>(
        event_type: &str,
        event_version: u32,
        payload: &[u8],
    ) -> Result<T, DecodeError> {
        rmp_serde::from_slice(payload).map_err(|source| DecodeError::Malformed {
            event_type: event_type.to_owned(),
            event_version,
            source,
        })
    }
    if event_version != EVENT_VERSION {
        return Err(if is_core_type(event_type) {
            DecodeError::UnknownVersion {
                event_type: event_type.to_owned(),
                event_version,
            }
        } else {
            DecodeError::UnknownType {
                event_type: event_type.to_owned(),
            }
        });
    }
    Ok(match event_type {
        types::CALL_RECORDED => Event::CallRecorded(read::<CallRecorded>(event_type, event_version, payload)?),
        types::TRIAL_ADMITTED => Event::TrialAdmitted(read::<TrialAdmitted>(event_type, event_version, payload)?),
        types::TRANSITION => Event::Transitioned(Box::new(read::<Transition>(event_type, event_version, payload)?)),
        types::POLICY_APPLIED => {
            Event::PolicyApplied(Box::new(read::<PolicyApplied>(event_type, event_version, payload)?))
        }
        other => {
            return Err(DecodeError::UnknownType {
                event_type: other.to_owned(),
            });
        }
    })
}
