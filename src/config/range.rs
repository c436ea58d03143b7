//! Counts and durations checked against their allowed range when the
//! configuration is read: a value outside it stops the start (exit 2) with
//! the variable's name and the range, instead of being clamped, silently,
//! where it is used. Durations are read in the unit their variable's name
//! says (`_MS`, `_SECONDS`) and carried as [`Duration`] from then on.

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::time::Duration;

/// `DB_POOL_SIZE (--db-pool-size)`: how an error names the setting.
pub(super) fn arg_name(arg: Option<&clap::Arg>) -> String {
    let Some(arg) = arg else {
        return "value".to_owned();
    };
    let long = arg.get_long().map(|l| format!("--{l}"));
    match (arg.get_env().and_then(OsStr::to_str), long) {
        (Some(env), Some(long)) => format!("{env} ({long})"),
        (Some(env), None) => env.to_owned(),
        (None, Some(long)) => long,
        (None, None) => arg.get_id().to_string(),
    }
}

/// A whole number from `min` to `max`, in `unit`.
fn whole(
    cmd: &clap::Command,
    arg: Option<&clap::Arg>,
    value: &OsStr,
    (min, max): (u64, u64),
    unit: &str,
) -> Result<u64, clap::Error> {
    let n = value.to_str().and_then(|s| s.trim().parse::<u64>().ok());
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(clap::Error::raw(
            ErrorKind::ValueValidation,
            format!(
                "{} must be a whole number from {min} to {max}{unit}, got '{}'\n",
                arg_name(arg),
                value.to_string_lossy()
            ),
        )
        .with_cmd(cmd)),
    }
}

/// A count (connections, requests) from 1 to `max`: typed as non-zero, so
/// no user needs to clamp it.
#[derive(Clone, Copy, Debug)]
pub struct Count(u64);

pub const fn count(max: u64) -> Count {
    Count(max)
}

impl TypedValueParser for Count {
    type Value = NonZeroUsize;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<NonZeroUsize, clap::Error> {
        let n = whole(cmd, arg, value, (1, self.0), "")?;
        // The ranges are far below usize::MAX on every target.
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        Ok(NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN))
    }
}

/// A duration in whole seconds or milliseconds, from `min` to `max` of them.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    min: u64,
    max: u64,
    millis: bool,
}

pub const fn seconds(min: u64, max: u64) -> Span {
    Span {
        min,
        max,
        millis: false,
    }
}

pub const fn millis(min: u64, max: u64) -> Span {
    Span {
        min,
        max,
        millis: true,
    }
}

impl TypedValueParser for Span {
    type Value = Duration;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<Duration, clap::Error> {
        let unit = if self.millis { " ms" } else { " s" };
        let n = whole(cmd, arg, value, (self.min, self.max), unit)?;
        Ok(if self.millis {
            Duration::from_millis(n)
        } else {
            Duration::from_secs(n)
        })
    }
}
