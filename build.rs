// Embeds the git revision so `--version`, /healthz and build_info say exactly
// what is running. A release build may pass GIT_REVISION explicitly (a source
// tarball has no .git).
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
    let rev = std::env::var("GIT_REVISION")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        });
    println!(
        "cargo:rustc-env=HELLO_GIT_REVISION={}",
        rev.unwrap_or_else(|| "unknown".into())
    );
}
