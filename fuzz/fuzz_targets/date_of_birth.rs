//! `DateOfBirth::parse` and the greeting on arbitrary input and an arbitrary
//! "today": never panics; accepts exactly the real `YYYY-MM-DD` dates before
//! today (checked against the `time` crate's own parser); what it accepts
//! displays back to the same text; the greeting counts 1..=366 days or says
//! happy birthday on the day itself.
#![no_main]

use hello_birthday::domain::{DateOfBirth, Username, days_until_birthday, greeting};
use libfuzzer_sys::fuzz_target;
use time::{Date, Duration, macros::format_description};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // The first three bytes pick "today" between 1900-01-01 and about 9800:
    // the service's clock is the real date, so year 9999 is out of reach.
    let offset = i64::from(u32::from_le_bytes([data[0], data[1], data[2], 0]) % 2_900_000);
    let today =
        Date::from_calendar_date(1900, time::Month::January, 1).unwrap() + Duration::days(offset);
    let Ok(raw) = std::str::from_utf8(&data[3..]) else {
        return;
    };

    let format = format_description!("[year]-[month]-[day]");
    // An independent oracle: the shape is exactly 10 ASCII bytes (the `time`
    // parser alone would also take a sign or a longer year), year 0 is no year.
    let oracle = Date::parse(raw, &format)
        .ok()
        .filter(|_| raw.len() == 10 && raw.as_bytes()[0].is_ascii_digit())
        .filter(|d| d.year() >= 1);

    match DateOfBirth::parse(raw, today) {
        Ok(dob) => {
            assert_eq!(oracle, Some(dob.date()), "accepted {raw:?}");
            assert!(dob.date() < today, "{raw:?} is not before {today}");
            let shown = dob.to_string();
            assert_eq!(shown, raw, "display round trip");
            assert_eq!(DateOfBirth::parse(&shown, today), Ok(dob));

            let n = days_until_birthday(&dob, today);
            assert!(n <= 366, "{n} days");
            let name = Username::parse("Fuzz").unwrap();
            let message = greeting(&name, &dob, today);
            if n == 0 {
                assert_eq!(message, "Hello, Fuzz! Happy birthday!");
            } else {
                let unit = if n == 1 { "day" } else { "days" };
                assert_eq!(
                    message,
                    format!("Hello, Fuzz! Your birthday is in {n} {unit}")
                );
            }
            // The next birthday really is `n` days away: same month and day,
            // or Feb 28 standing in for Feb 29 in a common year.
            let next = today + Duration::days(i64::from(n));
            let (m, d) = (dob.date().month(), dob.date().day());
            let feb29 = m == time::Month::February && d == 29;
            if feb29 && !time::util::is_leap_year(next.year()) {
                assert_eq!((next.month(), next.day()), (time::Month::February, 28));
            } else {
                assert_eq!((next.month(), next.day()), (m, d));
            }
        }
        Err(_) => assert!(
            oracle.is_none_or(|d| d >= today),
            "refused {raw:?} (today {today})"
        ),
    }
});
