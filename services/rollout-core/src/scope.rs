//! Practices, and the scopes that commands target.

use std::{collections::BTreeSet, sync::Arc};

use crate::id::{IcbCode, IdError, OdsCode, RegionCode, SubIcbCode, SupplierId};

/// The most practices one explicit-list scope may name.
pub const MAX_SCOPE_PRACTICES: usize = 10_000;

/// The ODS status of a practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PracticeStatus {
    /// Open (status code A).
    Active,
    /// Closed (C).
    Closed,
    /// Dormant (D).
    Dormant,
    /// Proposed, not yet open (P).
    Proposed,
}

impl PracticeStatus {
    /// Reads an ODS status code.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "A" => Self::Active,
            "C" => Self::Closed,
            "D" => Self::Dormant,
            "P" => Self::Proposed,
            _ => return None,
        })
    }
}

/// A GP practice with the attributes that scopes are judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Practice {
    /// ODS code.
    pub ods: OdsCode,
    /// Name from the national file.
    pub name: String,
    /// NHS England region.
    pub region: RegionCode,
    /// Integrated care board.
    pub icb: IcbCode,
    /// Sub-ICB location.
    pub sub_icb: SubIcbCode,
    /// The supplier serving it.
    pub supplier: SupplierId,
    /// ODS status.
    pub status: PracticeStatus,
}

/// The set of practices a command targets. A scope is a rule evaluated against a practice's
/// *current* attributes, never a list resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every practice.
    National,
    /// Every practice of one supplier.
    Supplier(SupplierId),
    /// Every practice in one region.
    Region(RegionCode),
    /// Every practice in one ICB.
    Icb(IcbCode),
    /// Every practice in one sub-ICB location.
    SubIcb(SubIcbCode),
    /// An explicit list (1 to [`MAX_SCOPE_PRACTICES`] codes, deduplicated).
    Practices(Arc<BTreeSet<OdsCode>>),
}

/// Why a scope is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Nothing was set.
    #[error("scope is empty: set exactly one of national, supplier, region, icb, sub_icb or practices")]
    Missing,
    /// A practice list with no codes.
    #[error("practice list is empty: name at least one practice")]
    EmptyList,
    /// A practice list that is too long.
    #[error("practice list has {count} codes; at most {MAX_SCOPE_PRACTICES} are allowed in one command")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// A code in a practice list is invalid.
    #[error("practice {index}: {source}")]
    Practice {
        /// Zero-based position in the list.
        index: usize,
        /// What is wrong with it.
        source: IdError,
    },
    /// A single code (supplier, region, ICB, sub-ICB) is invalid.
    #[error(transparent)]
    Id(#[from] IdError),
}

impl Scope {
    /// An explicit practice list, validated and deduplicated.
    pub fn practices<'a>(codes: impl ExactSizeIterator<Item = &'a str>) -> Result<Self, ScopeError> {
        let count = codes.len();
        if count == 0 {
            return Err(ScopeError::EmptyList);
        }
        if count > MAX_SCOPE_PRACTICES {
            return Err(ScopeError::TooMany { count });
        }
        let set = codes
            .enumerate()
            .map(|(index, c)| OdsCode::parse(c).map_err(|source| ScopeError::Practice { index, source }))
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Scope::Practices(Arc::new(set)))
    }

    /// Does the scope cover the practice, as it is now?
    pub fn covers(&self, p: &Practice) -> bool {
        match self {
            Scope::National => true,
            Scope::Supplier(s) => *s == p.supplier,
            Scope::Region(r) => *r == p.region,
            Scope::Icb(i) => *i == p.icb,
            Scope::SubIcb(s) => *s == p.sub_icb,
            Scope::Practices(set) => set.contains(&p.ods),
        }
    }

    /// A short description for explanations and logs, e.g. `ICB QN7` or `3 practices`.
    pub fn describe(&self) -> String {
        match self {
            Scope::National => "national".to_owned(),
            Scope::Supplier(s) => format!("supplier {s}"),
            Scope::Region(r) => format!("region {r}"),
            Scope::Icb(i) => format!("ICB {i}"),
            Scope::SubIcb(s) => format!("sub-ICB {s}"),
            Scope::Practices(set) if set.len() == 1 => {
                format!(
                    "practice {}",
                    set.iter().next().map(|c| c.as_str()).unwrap_or_default()
                )
            }
            Scope::Practices(set) => format!("{} practices", set.len()),
        }
    }
}
