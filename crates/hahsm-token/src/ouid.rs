//! Cluster-unique object ids.
use serde::{Deserialize, Serialize};
use std::fmt;

/// A cluster-unique object id: 128 random bits chosen when the object is created.
/// It never changes and is never reused; `CKA_UNIQUE_ID` exposes it as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ouid(pub [u8; 16]);

impl Ouid {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Ouid(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 32-hex-digit form printed by `Display`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Ouid(out))
    }
}

impl fmt::Display for Ouid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Ouid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ouid({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = Ouid([0xab; 16]);
        assert_eq!(Ouid::parse(&id.to_string()), Some(id));
        assert_eq!(Ouid::parse("xyz"), None);
        assert_eq!(Ouid::parse(&"g".repeat(32)), None);
    }
}
