//! Pure domain logic: validated types and the calendar. No I/O, no clock
//! reads: "today" is always an argument, so every calendar edge is testable.

mod date_of_birth;
mod greeting;
mod username;

pub use date_of_birth::DateOfBirth;
pub use greeting::{days_until_birthday, greeting};
pub use username::Username;

/// Why a value from the outside world was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("username must be 1 to 64 ASCII letters (A-Z, a-z)")]
    InvalidUsername,
    #[error("dateOfBirth must be a date in the form YYYY-MM-DD")]
    DateFormat,
    #[error("dateOfBirth is not a real calendar date")]
    NotARealDate,
    #[error("dateOfBirth must be before today's date (UTC)")]
    NotInThePast,
}

/// Reads back a date of birth that was validated before it was stored.
pub fn date_of_birth_from_storage(raw: &str) -> Option<DateOfBirth> {
    date_of_birth::parse_iso_date(raw)
        .ok()
        .map(DateOfBirth::from_stored)
}
