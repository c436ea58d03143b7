// Embeds the git revision so `--version`, /healthz and build_info say exactly
// what is running. A release build may pass GIT_REVISION explicitly (a source
// tarball has no .git).
use std::process::Command;

fn main() {
    // HB_SKIP_POSTGRES=1 marks the PostgreSQL tests #[ignore]: cargo lists each
    // one as "ignored" and counts them in its summary, never as passed.
    println!("cargo:rustc-check-cfg=cfg(hb_skip_postgres)");
    println!("cargo:rerun-if-env-changed=HB_SKIP_POSTGRES");
    if std::env::var("HB_SKIP_POSTGRES").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=hb_skip_postgres");
    }
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
