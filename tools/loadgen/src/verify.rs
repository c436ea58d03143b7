//! What this client knows about each user's stored value, and the read-back
//! that proves every acknowledged write survived.

use std::time::Duration;

use hyper::Method;

use crate::calendar::{self, Date};
use crate::client::Client;

/// What this client knows about one user's stored date of birth.
#[derive(Default, Debug)]
pub struct UserState {
    /// The value of the last PUT answered 2xx.
    pub confirmed: Option<Date>,
    /// Values of later PUTs whose outcome is unknown (error or non-2xx): the
    /// server may or may not have stored them.
    pub uncertain: Vec<Date>,
}

impl UserState {
    pub fn candidates(&self) -> impl Iterator<Item = &Date> {
        self.confirmed.iter().chain(self.uncertain.iter())
    }

    /// Records the answer to a PUT of `date`: a 2xx makes it the only
    /// possible value, anything else one more possibility.
    pub fn record_put(&mut self, date: Date, status: u16) {
        if (200..300).contains(&status) {
            self.confirmed = Some(date);
            self.uncertain.clear();
        } else {
            self.uncertain.push(date);
        }
    }

    /// Is a read-back answer (200 with `body`, or 404) consistent with what
    /// was written? `days` are the UTC dates the answer may have been
    /// computed on.
    pub fn readback_ok(&self, name: &str, status: u16, body: &[u8], days: &[Date]) -> bool {
        match status {
            200 => greeting_matches(self, name, body, days),
            // Only a user none of whose writes was acknowledged may be absent.
            _ => self.confirmed.is_none(),
        }
    }
}

/// Does a 200 body carry the greeting of one of the values the user may hold?
pub fn greeting_matches(state: &UserState, name: &str, body: &[u8], days: &[Date]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let Some(msg) = v.get("message").and_then(|m| m.as_str()) else {
        return false;
    };
    state.candidates().any(|dob| {
        days.iter()
            .any(|today| calendar::greeting(name, *dob, *today) == msg)
    })
}

/// The read-back's counts, summed over the workers.
#[derive(Default, Debug, PartialEq)]
pub struct VerifyResult {
    pub users_checked: u64,
    pub verified: u64,
    pub lost: u64,
    pub errors: u64,
    pub examples: Vec<String>,
}

impl VerifyResult {
    /// Adds another worker's counts, keeping at most 10 examples.
    pub fn add(&mut self, other: VerifyResult) {
        self.users_checked += other.users_checked;
        self.verified += other.verified;
        self.lost += other.lost;
        self.errors += other.errors;
        for e in other.examples {
            if self.examples.len() < 10 {
                self.examples.push(e);
            }
        }
    }
}

/// Reads back every user in `users` (named by `name`). Retries a read that
/// fails for transport reasons: this phase checks data, not availability.
pub async fn read_back(
    client: &mut Client,
    users: &[UserState],
    name: impl Fn(usize) -> String,
) -> VerifyResult {
    let mut res = VerifyResult::default();
    for (user, state) in users.iter().enumerate() {
        if state.candidates().next().is_none() {
            continue;
        }
        res.users_checked += 1;
        let name = name(user);
        let path = format!("/hello/{name}");
        let mut answer = None;
        for attempt in 0..5 {
            let today = calendar::today_utc();
            let out = client.send(Method::GET, &path, None).await;
            if out.status == 200 || out.status == 404 {
                answer = Some((out, today));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        }
        let Some((out, today)) = answer else {
            res.errors += 1;
            continue;
        };
        if state.readback_ok(
            &name,
            out.status,
            &out.body,
            &[today, calendar::today_utc()],
        ) {
            res.verified += 1;
        } else {
            res.lost += 1;
            if res.examples.len() < 5 {
                res.examples.push(format!(
                    "{name}: expected one of [{}], got {} {}",
                    state
                        .candidates()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    out.status,
                    String::from_utf8_lossy(&out.body)
                ));
            }
        }
    }
    res
}

/// Deletes every user that may have been written; returns how many could
/// not be deleted (204 and 404 both mean gone).
pub async fn cleanup(
    client: &mut Client,
    users: &[UserState],
    name: impl Fn(usize) -> String,
) -> u64 {
    let mut left = 0;
    for (user, state) in users.iter().enumerate() {
        if state.candidates().next().is_none() {
            continue;
        }
        let path = format!("/hello/{}", name(user));
        let mut gone = false;
        for attempt in 0..3 {
            let out = client.send(Method::DELETE, &path, None).await;
            if out.status == 204 || out.status == 404 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        }
        left += u64::from(!gone);
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str, dob: Date, today: Date) -> Vec<u8> {
        serde_json::json!({ "message": calendar::greeting(name, dob, today) })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn an_acknowledged_put_replaces_every_possibility() {
        let mut s = UserState::default();
        let (a, b, c) = (
            Date::new(1990, 3, 1),
            Date::new(1991, 4, 2),
            Date::new(1992, 5, 3),
        );
        s.record_put(a, 204);
        s.record_put(b, 503);
        s.record_put(c, 0);
        assert_eq!(s.candidates().copied().collect::<Vec<_>>(), vec![a, b, c]);
        s.record_put(b, 204);
        assert_eq!(s.candidates().copied().collect::<Vec<_>>(), vec![b]);
    }

    #[test]
    fn a_greeting_must_be_one_a_candidate_gives() {
        let today = Date::new(2026, 12, 7);
        let mut s = UserState::default();
        s.record_put(Date::new(1990, 3, 1), 204);
        s.record_put(Date::new(1991, 4, 2), 0);
        let days = [today];
        assert!(greeting_matches(
            &s,
            "ann",
            &body("ann", Date::new(1990, 3, 1), today),
            &days
        ));
        // The unacknowledged write may have landed too.
        assert!(greeting_matches(
            &s,
            "ann",
            &body("ann", Date::new(1991, 4, 2), today),
            &days
        ));
        assert!(!greeting_matches(
            &s,
            "ann",
            &body("ann", Date::new(1990, 6, 1), today),
            &days
        ));
        // Another user's greeting, or no JSON, is not this user's value.
        assert!(!greeting_matches(
            &s,
            "ann",
            &body("bob", Date::new(1990, 3, 1), today),
            &days
        ));
        assert!(!greeting_matches(&s, "ann", b"not json", &days));
        assert!(!greeting_matches(&s, "ann", b"{\"msg\":\"x\"}", &days));
        // Either of the days around the answer will do.
        let yesterday = Date::new(2026, 12, 6);
        let b = body("ann", Date::new(1990, 3, 1), yesterday);
        assert!(!greeting_matches(&s, "ann", &b, &[today]));
        assert!(greeting_matches(&s, "ann", &b, &[yesterday, today]));
    }

    #[test]
    fn only_a_never_acknowledged_user_may_be_missing() {
        let mut s = UserState::default();
        s.record_put(Date::new(1990, 3, 1), 0);
        assert!(s.readback_ok("ann", 404, b"", &[]));
        s.record_put(Date::new(1990, 3, 2), 204);
        assert!(!s.readback_ok("ann", 404, b"", &[]));
    }

    #[test]
    fn results_add_up_and_keep_ten_examples() {
        let mut total = VerifyResult::default();
        for _ in 0..3 {
            total.add(VerifyResult {
                users_checked: 5,
                verified: 1,
                lost: 4,
                errors: 0,
                examples: vec!["x".into(); 4],
            });
        }
        assert_eq!(
            (total.users_checked, total.verified, total.lost),
            (15, 3, 12)
        );
        assert_eq!(total.examples.len(), 10);
    }
}
