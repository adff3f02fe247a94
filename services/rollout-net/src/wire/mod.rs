//! Conversions between the wire types of `rollout-proto` and the domain types of
//! `rollout-core`, shared by both services and the CLI.
//!
//! Validation happens here, once, where a request arrives: every function that reads a wire
//! value takes the field path it came from, so a failure is an INVALID_ARGUMENT naming that
//! field in a `BadRequest` violation. Handlers never touch raw wire strings.
//!
//! `mod.rs` holds names, text, request ids, pages and times; `commands.rs` scopes, feature
//! definitions and commands; `answers.rs` practices, answers and audit events; `json.rs` any
//! message as protobuf JSON.

mod answers;
mod commands;
mod json;

pub use answers::*;
pub use commands::*;
pub use json::json_value;

use std::time::{Duration, SystemTime};

use rollout_core::{
    Action, Applicable, Command, CommandId, Evaluation, FailMode, FeatureDef, FeatureKey, IcbCode, OdsCode,
    OptOut, Practice, PracticeStatus, Reason, RegionCode, Rule, RuleKind, Scope, ScopeError, State,
    SubIcbCode, SupplierId, rules::MAX_REASON_CHARS,
};
use rollout_proto::v1 as pb;

use crate::error::ApiError;

/// Parses `prefix/{id}` (for example `features/{feature}`) with `parse` for the id.
fn named<T>(
    field: &str,
    name: &str,
    prefix: &str,
    parse: impl FnOnce(&str) -> Result<T, rollout_core::IdError>,
) -> Result<T, ApiError> {
    let id = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.contains('/'))
        .ok_or_else(|| {
            ApiError::invalid_field(
                field,
                format!("{} is not a name of the form {prefix}/{{id}}", shown(name)),
            )
        })?;
    parse(id).map_err(|e| ApiError::invalid_field(field, e))
}

/// `features/{feature}`.
pub fn feature_name(field: &str, name: &str) -> Result<FeatureKey, ApiError> {
    named(field, name, "features", FeatureKey::parse)
}

/// `commands/{command}`.
pub fn command_name(field: &str, name: &str) -> Result<CommandId, ApiError> {
    named(field, name, "commands", CommandId::parse)
}

/// `suppliers/{supplier}`.
pub fn supplier_name(field: &str, name: &str) -> Result<SupplierId, ApiError> {
    named(field, name, "suppliers", SupplierId::parse)
}

/// `practices/{practice}/features/{feature}` (lower-case ODS codes are accepted).
pub fn practice_feature_name(field: &str, name: &str) -> Result<(OdsCode, FeatureKey), ApiError> {
    let bad = || {
        ApiError::invalid_field(
            field,
            format!(
                "{} is not a name of the form practices/{{practice}}/features/{{feature}}",
                shown(name)
            ),
        )
    };
    let mut parts = name.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("practices"), Some(ods), Some("features"), Some(feature), None) => Ok((
            OdsCode::parse(ods).map_err(|e| ApiError::invalid_field(field, e))?,
            FeatureKey::parse(feature).map_err(|e| ApiError::invalid_field(field, e))?,
        )),
        _ => Err(bad()),
    }
}

/// `practices/{practice}/features/{feature}/optOut`.
pub fn opt_out_name(field: &str, name: &str) -> Result<(OdsCode, FeatureKey), ApiError> {
    let inner = name.strip_suffix("/optOut").ok_or_else(|| {
        ApiError::invalid_field(
            field,
            format!(
                "{} is not a name of the form practices/{{practice}}/features/{{feature}}/optOut",
                shown(name)
            ),
        )
    })?;
    practice_feature_name(field, inner)
}

/// The resource name of a practice's answer.
pub fn practice_feature_resource(ods: &OdsCode, feature: &FeatureKey) -> String {
    ["practices/", ods.as_str(), "/features/", feature.as_str()].concat()
}

/// A required, non-empty, bounded free-text field (reason, source): at most 1,000 characters
/// (`MAX_REASON_CHARS`) of printable text, newlines and tabs (see [`optional_text`]).
pub fn text(field: &str, value: &str) -> Result<String, ApiError> {
    let value = optional_text(field, value, MAX_REASON_CHARS)?;
    if value.is_empty() {
        return Err(ApiError::invalid_field(
            field,
            "is required: say why, in words a person will read later",
        ));
    }
    Ok(value)
}

/// Text as a command or a register record carries it (from the coordinator, or read back from
/// a store): required and at most 1,000 characters, as [`text`], but with any character. Text
/// is checked where a person writes it ([`text`]); what a version that did not check stored
/// must still load and travel.
pub fn stored_text(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid_field(field, "is required"));
    }
    if value.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid_field(
            field,
            format!("is longer than {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Free text a person wrote that may be empty (a comment, a description): trimmed, at most
/// `max` characters, and, like [`text`], only printable text, newlines and tabs. A NUL or
/// another control character is refused: PostgreSQL's text cannot hold a NUL, and a supplier
/// that cannot store a command blocks every later one.
pub fn optional_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if let Some((at, c)) = value
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\n' && *c != '\t')
    {
        return Err(ApiError::invalid_field(
            field,
            format!(
                "holds the control character U+{:04X} at byte {at}: only text, newlines and tabs",
                u32::from(c)
            ),
        ));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid_field(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Input quoted for an error message: at most 64 characters of it, so that an answer (and its
/// `grpc-message` header, which clients limit to a few KB) never grows with what was sent.
pub fn shown(input: &str) -> String {
    match input.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &input[..cut], input.len()),
        None => format!("{input:?}"),
    }
}

/// The fingerprint of a request without its idempotency key (SHA-256 of the method and the
/// encoded body), stored with the key to tell a retry from a reuse of the key.
pub fn request_fingerprint(method: &str, body: &impl prost::Message) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(method.as_bytes());
    h.update(body.encode_to_vec());
    h.finalize().to_vec()
}

/// An optional idempotency key: empty, or a UUID version 4 (normalised to lower case).
pub fn request_id(field: &str, value: &str) -> Result<Option<String>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    match uuid::Uuid::parse_str(value) {
        Ok(u) if u.get_version_num() == 4 => Ok(Some(u.hyphenated().to_string())),
        _ => Err(ApiError::invalid_field(
            field,
            format!("{} is not a UUID version 4", shown(value)),
        )),
    }
}

/// A page size: 0 means `default`; above `max` is refused.
pub fn page_size(field: &str, value: i32, default: usize, max: usize) -> Result<usize, ApiError> {
    match usize::try_from(value) {
        Ok(0) => Ok(default),
        Ok(n) if n <= max => Ok(n),
        _ => Err(ApiError::invalid_field(
            field,
            format!("must be between 0 and {max}, got {value}"),
        )),
    }
}

/// A page token made by [`page_token`]: opaque to callers, tied to the query it came from.
pub fn page_token_after(field: &str, token: &str, query: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::invalid_field(
            field,
            "is not a page token this server gave for this query; start again without one",
        )
    };
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (q, after) = text.split_once('\n').ok_or_else(bad)?;
    if q != query {
        return Err(bad());
    }
    Ok(Some(after.to_owned()))
}

/// The token for the page after `last`, for `query` (the request's filters, so a token is not
/// reused with other filters).
pub fn page_token(query: &str, last: &str) -> String {
    format!("{query}\n{last}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A timestamp from the wire: normalised (nanos in 0..1e9) and within 0001-01-01 to 9999-12-31,
/// as the protobuf Timestamp contract requires. prost would quietly normalise a bad one instead.
pub fn time(field: &str, t: &prost_types::Timestamp) -> Result<SystemTime, ApiError> {
    const MIN: i64 = -62_135_596_800;
    const MAX: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&t.nanos) || !(MIN..=MAX).contains(&t.seconds) {
        return Err(ApiError::invalid_field(
            field,
            "is not a valid timestamp (nanos must be 0 to 999,999,999; years 1 to 9999)",
        ));
    }
    SystemTime::try_from(*t).map_err(|e| ApiError::invalid_field(field, format!("is not a valid time: {e}")))
}

/// A timestamp for the wire.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

#[cfg(test)]
mod tests {
    //! Conversion from untrusted input never panics: arbitrary protobuf bytes and strings.

    use proptest::prelude::*;
    use prost::Message;

    #[test]
    fn free_text_refuses_control_characters_and_errors_quote_a_bounded_piece() {
        assert_eq!(
            text("reason", "  two\nlines\tand a tab ").expect("text"),
            "two\nlines\tand a tab"
        );
        for bad in ["nul\0", "bell\u{7}", "escape\u{1b}[2J", "carriage\rreturn"] {
            assert!(text("reason", bad).is_err(), "{bad:?}");
            assert!(optional_text("comment", bad, 1_000).is_err(), "{bad:?}");
        }
        assert_eq!(optional_text("comment", "", 1_000).expect("empty"), "");
        assert!(stored_text("reason", "as stored\r\n by an older version").is_ok());
        let long = "y".repeat(100_000);
        assert!(shown(&long).len() < 100, "{}", shown(&long));
        let refused = request_id("request_id", &long).expect_err("not a UUID");
        assert!(format!("{refused:?}").len() < 1_000);
    }

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn commands_from_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(c) = pb::Command::decode(bytes.as_slice()) {
                let _ = command("command", &c);
                let _ = command_unsequenced("command", &c);
            }
            if let Ok(s) = pb::Scope::decode(bytes.as_slice()) {
                let _ = scope("scope", Some(&s));
            }
            if let Ok(f) = pb::Feature::decode(bytes.as_slice()) {
                let _ = feature_def("feature", FeatureKey::parse("f").expect("key"), &f);
            }
            if let Ok(t) = prost_types::Timestamp::decode(bytes.as_slice()) {
                let _ = time("t", &t);
            }
        }

        #[test]
        fn names_and_fields_from_arbitrary_strings_never_panic(s in "\\PC{0,120}", n in any::<i32>()) {
            let _ = practice_feature_name("name", &s);
            let _ = opt_out_name("name", &s);
            let _ = feature_name("name", &s);
            let _ = command_name("name", &s);
            let _ = supplier_name("name", &s);
            let _ = request_id("request_id", &s);
            let _ = text("reason", &s);
            let _ = page_token_after("page_token", &s, "query");
            let _ = page_size("page_size", n, 10, 100);
        }

        #[test]
        fn valid_names_round_trip(ods in "[a-zA-Z][0-9]{5}", key in "[a-z][a-z0-9]{0,20}") {
            let name = format!("practices/{ods}/features/{key}");
            let (o, k) = practice_feature_name("name", &name).expect("valid");
            prop_assert_eq!(practice_feature_resource(&o, &k), format!("practices/{}/features/{key}", ods.to_uppercase()));
        }

        #[test]
        fn page_tokens_round_trip(q in "\\PC{0,40}", last in "\\PC{0,40}") {
            let token = page_token(&q, &last);
            let back = page_token_after("page_token", &token, &q).expect("own token");
            prop_assert_eq!(back, Some(last));
        }
    }

    #[test]
    fn a_command_survives_the_wire() {
        let c = Command {
            id: CommandId::parse("c-1").expect("id"),
            sequence: 7,
            feature: FeatureKey::parse("prospective-record-access").expect("key"),
            action: Action::Halt {
                scope: Scope::practices(["A81001", "b82002"].into_iter()).expect("scope"),
            },
            reason: "paused".into(),
            requester: "alice".into(),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            approved_by: vec!["bob".into()],
            redelivery_of: None,
            supplier: None,
        };
        let redelivery = Command {
            id: CommandId::parse("c-2").expect("id"),
            sequence: 8,
            action: Action::Resume {
                halts: vec![CommandId::parse("c-1").expect("id")],
            },
            redelivery_of: Some(CommandId::parse("c-0").expect("id")),
            supplier: Some(SupplierId::parse("tpp").expect("supplier")),
            ..c.clone()
        };
        let wire = command_pb(&redelivery);
        assert_eq!(
            (wire.redelivery_of.as_str(), wire.supplier.as_str()),
            ("commands/c-0", "suppliers/tpp")
        );
        assert_eq!(command("command", &wire).expect("valid"), redelivery);
        let bad = pb::Command {
            supplier: "tpp".into(),
            ..wire
        };
        let refused = command("command", &bad).expect_err("not a supplier name");
        assert!(refused.to_string().contains("command.supplier"), "{refused}");
        let back = command(
            "command",
            &pb::Command::decode(command_pb(&c).encode_to_vec().as_slice()).expect("decode"),
        )
        .expect("valid");
        assert_eq!(back, c);
    }

    #[test]
    fn an_answer_quotes_at_most_120_characters_of_a_reason() {
        let reason = "é".repeat(MAX_REASON_CHARS);
        let o = OptOut {
            practice: OdsCode::parse("A81001").expect("ods"),
            feature: FeatureKey::parse("prospective-record-access").expect("key"),
            reason: reason.clone(),
            source: reason.clone(),
            recorded_by: "practice-admin".into(),
            recorded_at: SystemTime::UNIX_EPOCH,
        };
        let rule = applicable_pb(&Applicable::OptOut(&o));
        for (field, text) in [("reason", &rule.reason), ("source", &rule.source)] {
            assert_eq!(text.chars().count(), rollout_core::QUOTED_REASON_CHARS, "{field}");
            assert!(text.ends_with('…'), "{field}: {text}");
        }
    }
}
