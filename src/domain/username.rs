use super::DomainError;
use std::fmt;

/// A username: 1 to 64 ASCII letters, case-sensitive. Only `parse` builds one,
/// so holding a `Username` proves it was checked.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let ok = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_alphabetic());
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(DomainError::InvalidUsername)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_of_both_cases_up_to_64() {
        for ok in ["a", "Z", "Alice", "alice", &"x".repeat(64)] {
            assert_eq!(Username::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "x".repeat(65);
        for bad in [
            "", &long, "al1ce", "al ice", "al-ice", "al_ice", "é", "ałice", "alice\n", "alice\0",
            "ａｂ", "%41",
        ] {
            assert_eq!(
                Username::parse(bad),
                Err(DomainError::InvalidUsername),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn case_is_significant() {
        assert_ne!(Username::parse("Alice"), Username::parse("alice"));
    }
}
