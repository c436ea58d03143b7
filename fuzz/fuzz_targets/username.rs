//! `Username::parse` on arbitrary input: never panics, accepts exactly 1 to
//! 64 ASCII letters, and what it accepts displays back to the same text.
#![no_main]

use hello_birthday::domain::Username;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Paths reach the parser as (percent-decoded) UTF-8; other bytes cannot.
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let expected = (1..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphabetic());
    match Username::parse(raw) {
        Ok(name) => {
            assert!(expected, "accepted {raw:?}");
            assert_eq!(name.as_str(), raw);
            let shown = name.to_string();
            assert_eq!(shown, raw);
            assert_eq!(Username::parse(&shown).as_ref(), Ok(&name), "round trip");
        }
        Err(_) => assert!(!expected, "refused {raw:?}"),
    }
});
