//! Just enough calendar to predict the service's greeting for a date of
//! birth, so a GET proves which value is stored. The rules are the service's
//! contract (README): UTC "today", Feb 29 celebrated on Feb 28 in common
//! years, "in 1 day" singular.
//!
//! This is deliberately a second implementation, sharing no code with the
//! service's `src/domain`: an oracle independent of the code under test is the
//! point. Were loadgen to call the service's own calendar, a bug there would
//! predict itself and every check would pass.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

impl Date {
    pub fn new(year: i64, month: u32, day: u32) -> Self {
        Date { year, month, day }
    }

    /// Days since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
    pub fn days(self) -> i64 {
        let y = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = self.month as i64;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + self.day as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    pub fn from_days(z: i64) -> Self {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date { year, month, day }
    }
}

impl Date {
    /// `YYYY-MM-DD`, as the service stores it.
    pub fn parse(s: &str) -> Option<Date> {
        let mut it = s.splitn(3, '-');
        let (y, m, d) = (it.next()?, it.next()?, it.next()?);
        let date = Date::new(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
        (Date::from_days(date.days()) == date).then_some(date)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

pub fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub fn today_utc() -> Date {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Date::from_days((secs / 86_400) as i64)
}

fn birthday_in(dob: Date, year: i64) -> Date {
    if dob.month == 2 && dob.day == 29 && !is_leap(year) {
        Date::new(year, 2, 28)
    } else {
        Date::new(year, dob.month, dob.day)
    }
}

/// Calendar days from `today` to the next birthday (0 on the day).
pub fn days_until_birthday(dob: Date, today: Date) -> i64 {
    let this_year = birthday_in(dob, today.year);
    if this_year.days() >= today.days() {
        this_year.days() - today.days()
    } else {
        birthday_in(dob, today.year + 1).days() - today.days()
    }
}

/// The message the service answers for `GET /hello/{name}`.
pub fn greeting(name: &str, dob: Date, today: Date) -> String {
    match days_until_birthday(dob, today) {
        0 => format!("Hello, {name}! Happy birthday!"),
        1 => format!("Hello, {name}! Your birthday is in 1 day"),
        n => format!("Hello, {name}! Your birthday is in {n} days"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        for z in -800_000..800_000 {
            assert_eq!(Date::from_days(z).days(), z);
        }
        assert_eq!(Date::new(1970, 1, 1).days(), 0);
        assert_eq!(Date::new(2000, 3, 1).days(), 11_017);
    }

    #[test]
    fn parses_real_dates_only() {
        assert_eq!(Date::parse("1992-02-29"), Some(Date::new(1992, 2, 29)));
        assert_eq!(Date::parse("1990-02-29"), None);
        assert_eq!(Date::parse("1990-13-01"), None);
        assert_eq!(Date::parse("nonsense"), None);
    }

    #[test]
    fn greetings_follow_the_contract() {
        let today = Date::new(2025, 2, 27);
        let g = |y, m, d| greeting("a", Date::new(y, m, d), today);
        assert_eq!(g(1990, 2, 27), "Hello, a! Happy birthday!");
        assert_eq!(g(1990, 2, 28), "Hello, a! Your birthday is in 1 day");
        // Feb 29 is celebrated on Feb 28 in a common year.
        assert_eq!(g(1992, 2, 29), "Hello, a! Your birthday is in 1 day");
        assert_eq!(g(1990, 3, 1), "Hello, a! Your birthday is in 2 days");
    }

    #[test]
    fn day_counts_cross_leap_days() {
        let n = |dob: (i64, u32, u32), today: (i64, u32, u32)| {
            days_until_birthday(
                Date::new(dob.0, dob.1, dob.2),
                Date::new(today.0, today.1, today.2),
            )
        };
        // In a leap year Feb 29 is the day itself.
        assert_eq!(n((1992, 2, 29), (2024, 2, 27)), 2);
        // Just passed: the next one is a year away, 366 days when a Feb 29 lies between.
        assert_eq!(n((1990, 3, 1), (2023, 3, 2)), 365);
        assert_eq!(n((1990, 3, 1), (2024, 3, 2)), 364);
        assert_eq!(n((1990, 3, 1), (2023, 3, 1)), 0);
        assert_eq!(n((1990, 2, 28), (2023, 3, 1)), 364);
        assert_eq!(n((1990, 2, 28), (2023, 12, 31)), 59);
        assert_eq!(n((1990, 12, 31), (2024, 1, 1)), 365);
        assert_eq!(n((1990, 1, 1), (2023, 12, 31)), 1);
    }
}
