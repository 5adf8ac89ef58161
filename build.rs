//! Tells the interop tests whether `python3` is here to install the Python meshtastic client
//! with: without it they are reported as ignored, with the reason, rather than passing unrun.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_python)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python {
        println!("cargo::rustc-cfg=no_python");
    }
}
