//! The history hash: one SHA-256 value that stands for the whole command log up to a sequence.
//!
//! `H(0)` is 32 zero bytes; `H(n) = SHA-256(H(n-1) || "n" || ":" || command id of n)`. Two
//! logs agree up to `n` exactly when their hashes at `n` agree, so the coordinator and a
//! supplier compare one value instead of their histories: a supplier refuses a snapshot or a
//! command that does not continue the history it applied, and the coordinator sees a supplier
//! that holds commands it does not know (a coordinator restored from an older backup) as
//! diverged rather than erasing them.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::id::CommandId;

/// The hash of a command log up to some sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HistoryHash([u8; 32]);

impl HistoryHash {
    /// The hash of the empty log (sequence 0).
    pub const EMPTY: HistoryHash = HistoryHash([0; 32]);

    /// The hash after appending the command `id` at `sequence`.
    pub fn next(&self, sequence: u64, id: &CommandId) -> HistoryHash {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(sequence.to_string().as_bytes());
        h.update(b":");
        h.update(id.as_str().as_bytes());
        HistoryHash(h.finalize().into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads 32 bytes; `None` for any other length. An empty slice reads as [`Self::EMPTY`]
    /// (what a peer that never synchronised sends).
    pub fn from_slice(bytes: &[u8]) -> Option<HistoryHash> {
        if bytes.is_empty() {
            return Some(HistoryHash::EMPTY);
        }
        bytes.try_into().ok().map(HistoryHash)
    }

    /// Lower-case hex, as stored and logged.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads lower- or upper-case hex of 32 bytes.
    pub fn from_hex(s: &str) -> Option<HistoryHash> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(HistoryHash(out))
    }
}

impl fmt::Debug for HistoryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HistoryHash({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for HistoryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CommandId {
        CommandId::parse(s).expect("id")
    }

    #[test]
    fn the_hash_depends_on_every_command_and_its_place() {
        let a = HistoryHash::EMPTY.next(1, &id("c1")).next(2, &id("c2"));
        let b = HistoryHash::EMPTY.next(1, &id("c1")).next(2, &id("c3"));
        let c = HistoryHash::EMPTY.next(1, &id("c2")).next(2, &id("c1"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, HistoryHash::EMPTY.next(1, &id("c1")).next(2, &id("c2")));
        assert_eq!(HistoryHash::from_hex(&a.to_hex()), Some(a));
        assert_eq!(HistoryHash::from_slice(a.as_bytes()), Some(a));
        assert_eq!(HistoryHash::from_slice(&[]), Some(HistoryHash::EMPTY));
        assert_eq!(HistoryHash::from_slice(&[1, 2, 3]), None);
        assert_eq!(HistoryHash::from_hex("zz"), None);
    }
}
