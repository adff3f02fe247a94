//! Validated, normalised identifiers.
//!
//! Every identifier is parsed once, where a request or a file arrives; the rest of the system
//! only ever holds the validated types. Short codes are stored inline (`Copy`, no allocation),
//! which keeps rule-index lookups cheap on the hot path.

use std::{fmt, sync::Arc};

/// Which identifier failed validation; names the field in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// An ODS practice code.
    Practice,
    /// An NHS England region code.
    Region,
    /// An integrated care board code.
    Icb,
    /// A sub-ICB location code.
    SubIcb,
    /// A supplier slug.
    Supplier,
    /// A feature key.
    Feature,
    /// A command id.
    Command,
}

impl IdKind {
    /// What a valid value looks like, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            IdKind::Practice => "one letter and five digits, for example A81001",
            IdKind::Region => "one of Y56, Y58, Y59, Y60, Y61, Y62, Y63",
            IdKind::Icb => "Q and two letters or digits, for example QN7",
            IdKind::SubIcb => "3 to 5 letters or digits, for example 33G",
            IdKind::Supplier => {
                "a lower-case slug: a letter, then letters, digits or single hyphens, at most 63 characters, for example emis"
            }
            IdKind::Feature => {
                "a lower-case slug: a letter, then letters, digits or single hyphens, at most 63 characters, for example prospective-record-access"
            }
            IdKind::Command => "1 to 63 lower-case letters, digits or hyphens",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Practice => "practice code",
            IdKind::Region => "region code",
            IdKind::Icb => "ICB code",
            IdKind::SubIcb => "sub-ICB location code",
            IdKind::Supplier => "supplier",
            IdKind::Feature => "feature key",
            IdKind::Command => "command id",
        })
    }
}

/// An identifier that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {input:?} is not valid: expected {}", kind.expected())]
pub struct IdError {
    /// Which identifier.
    pub kind: IdKind,
    /// The offending input, cut to 64 characters so a huge value is not echoed back.
    pub input: String,
}

impl IdError {
    fn new(kind: IdKind, input: &str) -> Self {
        let input = match input.char_indices().nth(64) {
            Some((cut, _)) => format!("{}...", &input[..cut]),
            None => input.to_owned(),
        };
        IdError { kind, input }
    }
}

/// An ASCII code of at most `N` bytes, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Code<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> Code<N> {
    /// Upper-cases `s` and checks every byte; `s` must be `min..=N` bytes long.
    fn upper(s: &str, min: usize, ok: impl Fn(usize, u8) -> bool) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < min || b.len() > N {
            return None;
        }
        let mut bytes = [0u8; N];
        for (i, &c) in b.iter().enumerate() {
            let c = c.to_ascii_uppercase();
            if !ok(i, c) {
                return None;
            }
            bytes[i] = c;
        }
        Some(Code {
            len: b.len() as u8,
            bytes,
        })
    }

    fn as_str(&self) -> &str {
        // Only ASCII is ever stored, so this cannot fail.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

macro_rules! code_type {
    ($(#[$doc:meta])* $name:ident, $n:literal, $kind:expr, $min:literal, $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Code<$n>);

        impl $name {
            /// Validates and normalises (upper-cases) the code.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                Code::upper(s, $min, $ok).map($name).ok_or_else(|| IdError::new($kind, s))
            }

            /// The normalised code.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

code_type!(
    /// An English GP practice ODS code: one letter and five digits, upper case (`A81001`).
    OdsCode, 6, IdKind::Practice, 6,
    |i, c| if i == 0 { c.is_ascii_uppercase() } else { c.is_ascii_digit() }
);

code_type!(
    /// An NHS England region code: `Y56` or `Y58` to `Y63`.
    RegionCode, 3, IdKind::Region, 3,
    |i, c| match i { 0 => c == b'Y', 1 => c == b'5' || c == b'6', _ => c.is_ascii_digit() }
);

impl RegionCode {
    fn in_range(self) -> bool {
        matches!(
            self.as_str(),
            "Y56" | "Y58" | "Y59" | "Y60" | "Y61" | "Y62" | "Y63"
        )
    }

    /// Validates a region code against the list of current NHS England regions.
    pub fn parse_region(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
            .ok()
            .filter(|r| r.in_range())
            .ok_or_else(|| IdError::new(IdKind::Region, s))
    }
}

code_type!(
    /// An integrated care board code: `Q` and two letters or digits (`QN7`).
    IcbCode, 3, IdKind::Icb, 3,
    |i, c| if i == 0 { c == b'Q' } else { c.is_ascii_alphanumeric() }
);

code_type!(
    /// A sub-ICB location code: 3 to 5 letters or digits (`33G`).
    SubIcbCode, 5, IdKind::SubIcb, 3,
    |_, c| c.is_ascii_alphanumeric()
);

/// A lower-case slug: starts with a letter, then letters, digits or single hyphens, not ending
/// in a hyphen, 1 to 63 characters (AIP-122 resource id rules).
fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates the identifier. Upper case is refused, not folded: these are resource
            /// ids, which are lower case by definition.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let valid: fn(&str) -> bool = $valid;
                if valid(s) { Ok($name(Arc::from(s))) } else { Err(IdError::new($kind, s)) }
            }

            /// The identifier.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

slug_type!(
    /// A GP IT supplier: a lower-case slug (`emis`, `tpp`, `cegedim`, `microtest`).
    SupplierId, IdKind::Supplier, is_slug
);

slug_type!(
    /// A feature key: a lower-case slug of 1 to 63 characters (`prospective-record-access`).
    FeatureKey, IdKind::Feature, is_slug
);

slug_type!(
    /// The id of a coordinator command (the `{command}` of `commands/{command}`): 1 to 63
    /// lower-case letters, digits or hyphens, such as a UUID.
    CommandId, IdKind::Command,
    |s| !s.is_empty() && s.len() <= 63 && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes_are_normalised_and_checked() {
        assert_eq!(
            OdsCode::parse("a81001").map(|c| c.to_string()),
            Ok("A81001".into())
        );
        for bad in [
            "", "A8100", "A810011", "181001", "AA1001", "A8100X", " A81001", "Á81001",
        ] {
            let err = OdsCode::parse(bad).expect_err(bad);
            assert_eq!(err.kind, IdKind::Practice);
        }
    }

    #[test]
    fn regions_are_the_seven_current_ones() {
        for ok in ["Y56", "y58", "Y63"] {
            assert!(RegionCode::parse_region(ok).is_ok(), "{ok}");
        }
        for bad in ["Y57", "Y64", "Y5", "X60", "Y600"] {
            assert!(RegionCode::parse_region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn icb_and_sub_icb_shapes() {
        assert_eq!(IcbCode::parse("qn7").map(|c| c.to_string()), Ok("QN7".into()));
        assert!(IcbCode::parse("RN7").is_err());
        assert!(IcbCode::parse("Q7").is_err());
        assert!(SubIcbCode::parse("33g").is_ok());
        assert!(SubIcbCode::parse("15N12").is_ok());
        assert!(SubIcbCode::parse("33").is_err());
        assert!(SubIcbCode::parse("33-G").is_err());
        assert!(SubIcbCode::parse("123456").is_err());
    }

    #[test]
    fn slugs() {
        assert!(FeatureKey::parse("prospective-record-access").is_ok());
        assert!(FeatureKey::parse(&"a".repeat(63)).is_ok());
        for bad in ["", "Emis", "1abc", "abc-", "a--b", "a_b", &"a".repeat(64)] {
            assert!(FeatureKey::parse(bad).is_err(), "{bad}");
            assert!(SupplierId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_input_is_cut_in_the_error() {
        let err = FeatureKey::parse(&"X".repeat(10_000)).expect_err("too long");
        assert!(err.input.len() < 80);
        assert!(err.to_string().contains("feature key"));
    }
}
