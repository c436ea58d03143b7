use super::{DateOfBirth, Username};
use time::{Date, Month};

/// The day a birthday falls on in `year`: Feb 29 birthdays are kept on Feb 28
/// in common years (the rule most civil registries apply).
fn birthday_in(dob: Date, year: i32) -> Date {
    let (month, day) = (dob.month(), dob.day());
    if month == Month::February && day == 29 && !time::util::is_leap_year(year) {
        return Date::from_calendar_date(year, Month::February, 28).expect("Feb 28 exists");
    }
    Date::from_calendar_date(year, month, day).expect("a valid date moved to another year")
}

/// Calendar days from `today` to the next birthday: 0 on the day itself,
/// otherwise 1..=365 (consecutive birthdays are at most 366 days apart).
pub fn days_until_birthday(dob: &DateOfBirth, today: Date) -> u16 {
    let this_year = birthday_in(dob.date(), today.year());
    let next = if this_year >= today {
        this_year
    } else {
        birthday_in(dob.date(), today.year() + 1)
    };
    u16::try_from((next - today).whole_days()).expect("at most 365 days")
}

/// The message for `GET /hello/{username}`.
pub fn greeting(username: &Username, dob: &DateOfBirth, today: Date) -> String {
    match days_until_birthday(dob, today) {
        0 => format!("Hello, {username}! Happy birthday!"),
        1 => format!("Hello, {username}! Your birthday is in 1 day"),
        n => format!("Hello, {username}! Your birthday is in {n} days"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::date;

    fn days(dob: Date, today: Date) -> u16 {
        days_until_birthday(&DateOfBirth::from_stored(dob), today)
    }

    #[test]
    fn the_hard_days() {
        // (date of birth, today, expected N)
        let cases = [
            // common year 2027: Feb 28 and Mar 1
            (date!(1990 - 02 - 28), date!(2027 - 02 - 28), 0),
            (date!(1990 - 03 - 01), date!(2027 - 02 - 28), 1),
            (date!(1990 - 02 - 28), date!(2027 - 03 - 01), 364), // next is 2028-02-28
            (date!(1990 - 03 - 01), date!(2027 - 03 - 01), 0),
            // leap year 2028: Feb 29 and Mar 1
            (date!(1990 - 02 - 28), date!(2028 - 02 - 29), 365), // passed yesterday
            (date!(1990 - 03 - 01), date!(2028 - 02 - 29), 1),
            (date!(1990 - 03 - 01), date!(2028 - 03 - 01), 0),
            (date!(1990 - 02 - 28), date!(2028 - 03 - 01), 364), // next 2029-02-28
            // year end
            (date!(1990 - 01 - 01), date!(2026 - 12 - 31), 1),
            (date!(1990 - 12 - 31), date!(2026 - 12 - 31), 0),
            (date!(1990 - 12 - 31), date!(2027 - 01 - 01), 364),
            // birthday yesterday: 364 when the next one is in a common year,
            // 365 when a Feb 29 lies in between
            (date!(1990 - 11 - 26), date!(2026 - 11 - 27), 364),
            (date!(1990 - 11 - 26), date!(2027 - 11 - 27), 365),
            (date!(1990 - 02 - 27), date!(2028 - 02 - 28), 365),
            // the most there is: a Feb 29 birthday kept on Feb 28 (2027) and
            // then on Feb 29 (2028)
            (date!(2000 - 02 - 29), date!(2027 - 03 - 01), 365),
            // birthday today; born yesterday
            (date!(1990 - 11 - 27), date!(2026 - 11 - 27), 0),
            (date!(2026 - 11 - 26), date!(2026 - 11 - 27), 364),
        ];
        for (dob, today, want) in cases {
            assert_eq!(days(dob, today), want, "dob {dob} today {today}");
        }
    }

    #[test]
    fn feb_29_birthday_on_every_hard_day() {
        let dob = date!(2000 - 02 - 29);
        let cases = [
            (date!(2027 - 02 - 27), 1),   // common year: celebrated Feb 28
            (date!(2027 - 02 - 28), 0),   // happy birthday on Feb 28
            (date!(2027 - 03 - 01), 365), // next is 2028-02-29
            (date!(2028 - 02 - 28), 1),   // leap year: the real day
            (date!(2028 - 02 - 29), 0),
            (date!(2028 - 03 - 01), 364), // next is 2029-02-28
            (date!(2026 - 12 - 31), 59),  // to 2027-02-28
            (date!(2027 - 12 - 31), 60),  // to 2028-02-29
            (date!(2100 - 02 - 28), 0),   // 2100 is not a leap year
        ];
        for (today, want) in cases {
            assert_eq!(days(dob, today), want, "today {today}");
        }
    }

    #[test]
    fn messages() {
        let user = Username::parse("Alice").unwrap();
        let dob = |d| DateOfBirth::from_stored(d);
        let today = date!(2026 - 11 - 27);
        assert_eq!(
            greeting(&user, &dob(date!(1990 - 11 - 27)), today),
            "Hello, Alice! Happy birthday!"
        );
        assert_eq!(
            greeting(&user, &dob(date!(1990 - 11 - 28)), today),
            "Hello, Alice! Your birthday is in 1 day"
        );
        assert_eq!(
            greeting(&user, &dob(date!(1990 - 11 - 29)), today),
            "Hello, Alice! Your birthday is in 2 days"
        );
    }

    fn any_date() -> impl Strategy<Value = Date> {
        // Julian days of 0001-01-01 .. 9998-12-31.
        (1_721_426i32..=5_373_119).prop_map(|jd| Date::from_julian_day(jd).unwrap())
    }

    /// Whether `day` is a birthday of someone born on `dob`, by the Feb 28 rule,
    /// stated independently of `birthday_in`.
    fn is_birthday(dob: Date, day: Date) -> bool {
        let same = dob.month() == day.month() && dob.day() == day.day();
        let feb29_rule = dob.month() == Month::February
            && dob.day() == 29
            && day.month() == Month::February
            && day.day() == 28
            && !time::util::is_leap_year(day.year());
        same || feb29_rule
    }

    proptest! {
        #[test]
        fn next_birthday_is_really_the_next_one(a in any_date(), b in any_date()) {
            let (dob, today) = if a < b { (a, b) } else if b < a { (b, a) } else { return Ok(()) };
            let n = days(dob, today);
            prop_assert!(n <= 365, "dob {} today {} n {}", dob, today, n);
            let target = today + time::Duration::days(i64::from(n));
            prop_assert!(is_birthday(dob, target), "dob {} today {} n {}", dob, today, n);
            // and no earlier day is one
            for k in 0..n {
                let d = today + time::Duration::days(i64::from(k));
                prop_assert!(!is_birthday(dob, d), "earlier birthday {} (dob {} today {})", d, dob, today);
            }
        }
    }
}
