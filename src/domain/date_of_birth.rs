use super::DomainError;
use std::fmt;
use time::{Date, Month};

/// A date of birth: a real Gregorian date strictly before "today" (UTC).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateOfBirth(Date);

impl DateOfBirth {
    /// Parses exactly `YYYY-MM-DD` (zero-padded, year 0001-9999) and checks it
    /// is before `today`. Anything looser (timestamps, unpadded fields, other
    /// separators, signs, whitespace) is refused rather than guessed at.
    pub fn parse(raw: &str, today: Date) -> Result<Self, DomainError> {
        let date = parse_iso_date(raw)?;
        if date < today {
            Ok(Self(date))
        } else {
            Err(DomainError::NotInThePast)
        }
    }

    /// Rebuilds a value read back from storage, where it was validated on the
    /// way in. Not for input from clients.
    pub fn from_stored(date: Date) -> Self {
        Self(date)
    }

    pub fn date(self) -> Date {
        self.0
    }
}

/// `YYYY-MM-DD` to a `Date`, strictly.
pub(crate) fn parse_iso_date(raw: &str) -> Result<Date, DomainError> {
    let b = raw.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return Err(DomainError::DateFormat);
    }
    let num = |r: std::ops::Range<usize>| {
        b[r].iter()
            .fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0'))
    };
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    // There is no year 0 in the Gregorian calendar as people write it.
    if year == 0 {
        return Err(DomainError::NotARealDate);
    }
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or(DomainError::NotARealDate)?;
    let day = u8::try_from(day).map_err(|_| DomainError::NotARealDate)?;
    Date::from_calendar_date(year as i32, month, day).map_err(|_| DomainError::NotARealDate)
}

impl fmt::Display for DateOfBirth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}",
            d.year(),
            u8::from(d.month()),
            d.day()
        )
    }
}

/// Dates of birth are personal data: `Debug` never shows them, so they cannot
/// reach a log line by accident.
impl fmt::Debug for DateOfBirth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DateOfBirth(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 11 - 27);

    #[test]
    fn accepts_real_past_dates() {
        for (raw, want) in [
            ("1990-09-16", date!(1990 - 09 - 16)),
            ("2024-02-29", date!(2024 - 02 - 29)),
            ("2000-02-29", date!(2000 - 02 - 29)),
            ("0001-01-01", date!(0001 - 01 - 01)),
            ("2026-11-26", date!(2026 - 11 - 26)),
        ] {
            let dob = DateOfBirth::parse(raw, TODAY).unwrap();
            assert_eq!(dob.date(), want);
            assert_eq!(dob.to_string(), raw, "round-trips");
        }
    }

    #[test]
    fn refuses_today_and_the_future() {
        for raw in ["2026-11-27", "2026-11-28", "9999-12-31"] {
            assert_eq!(
                DateOfBirth::parse(raw, TODAY),
                Err(DomainError::NotInThePast),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_unreal_dates() {
        for raw in [
            "2023-02-29",
            "1900-02-29",
            "2021-04-31",
            "2021-13-01",
            "2021-00-10",
            "2021-01-00",
            "0000-01-01",
            "2021-01-32",
        ] {
            assert_eq!(
                DateOfBirth::parse(raw, TODAY),
                Err(DomainError::NotARealDate),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_other_shapes() {
        for raw in [
            "",
            "1990-9-16",
            "1990-09-6",
            "90-09-16",
            "1990/09/16",
            "1990.09.16",
            "19900916",
            "1990-09-16T00:00:00Z",
            " 1990-09-16",
            "1990-09-16 ",
            "+1990-09-16",
            "1990-09-1a",
            "１９９０-09-16",
            "1990-09-16\n",
            "-990-09-16",
            "1990--9-16",
        ] {
            assert_eq!(
                DateOfBirth::parse(raw, TODAY),
                Err(DomainError::DateFormat),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn debug_does_not_leak_the_date() {
        let dob = DateOfBirth::parse("1990-09-16", TODAY).unwrap();
        assert!(!format!("{dob:?}").contains("1990"));
    }
}
