//! `decode_put_body` on arbitrary bytes: never panics, and accepts only a
//! JSON object whose single member is `dateOfBirth` with a string value.
#![no_main]

use hello_birthday::http::body::decode_put_body;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = decode_put_body(data) else {
        return;
    };
    let value: Value = serde_json::from_slice(data).expect("accepted a body that is not JSON");
    let object = value
        .as_object()
        .expect("accepted a body that is not an object");
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["dateOfBirth"],
        "accepted unknown or missing fields"
    );
    // serde_json keeps the last of duplicate keys; an accepted body must not
    // be ambiguous about which date it carries.
    assert_eq!(
        object["dateOfBirth"].as_str(),
        Some(body.date_of_birth.as_str()),
        "decoded a different date than the body holds"
    );
});
