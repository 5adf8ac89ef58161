//! Tells the tests that need outside programs whether they are here: without `python3` (to
//! install the Python meshtastic client with) the interop tests, and without `mosquitto` (the
//! MQTT broker) the broker tests, are reported as ignored, with the reason, rather than
//! passing unrun.

use std::path::Path;
use std::process::{Command, Stdio};

/// Where Debian puts `mosquitto`; a user's PATH often lacks the sbin directories.
const SBIN: &[&str] = &["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_python)");
    println!("cargo::rustc-check-cfg=cfg(no_mosquitto)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    for path in SBIN {
        println!("cargo::rerun-if-changed={path}");
    }
    if !runs("python3", "--version") {
        println!("cargo::rustc-cfg=no_python");
    }
    let mosquitto = runs("mosquitto", "-h") || SBIN.iter().any(|p| Path::new(p).is_file());
    if !mosquitto {
        println!("cargo::rustc-cfg=no_mosquitto");
    }
}

/// Whether `program` can be started (`mosquitto -h` exits non-zero, so starting is enough).
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| program == "mosquitto" || s.success())
}
