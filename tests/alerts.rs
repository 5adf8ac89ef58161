//! The alerting rules in `assets/keysync-alerts.yml`: promtool checks them and runs their unit
//! tests (`assets/keysync-alerts.test.yml`, a firing and a quiet case per rule), and every
//! series they name is one that `/metrics` exports, labels included — a renamed series fails
//! here rather than silently never alerting.
//!
//! A custom harness (libtest-mimic), so that without promtool the promtool trials are reported
//! *ignored, with the reason*, not passed; CI sets `KEYSYNC_PROMTOOL_REQUIRED=1`, and there a
//! missing promtool fails them.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let promtool = promtool();
    let mut trials = vec![
        Trial::test(
            "every_series_the_rules_use_is_one_keysync_exports",
            every_series_the_rules_use_is_one_keysync_exports,
        ),
        Trial::test(
            "the_pending_key_age_and_the_release_budget_are_exported",
            the_pending_key_age_and_the_release_budget_are_exported,
        ),
    ];
    for (name, promtool_args) in [
        (
            "promtool_check_rules_accepts_the_rules",
            ["check", "rules", "keysync-alerts.yml"],
        ),
        (
            "promtool_test_rules_fires_and_stays_quiet_as_each_rule_says",
            ["test", "rules", "keysync-alerts.test.yml"],
        ),
    ] {
        let trial = match &promtool {
            Ok(path) => {
                let path = path.clone();
                Trial::test(name, move || run_promtool(&path, &promtool_args))
            }
            Err(why) if std::env::var_os("KEYSYNC_PROMTOOL_REQUIRED").is_some() => {
                let why = format!("KEYSYNC_PROMTOOL_REQUIRED is set but {why}");
                Trial::test(name, move || Err(Failed::from(why)))
            }
            Err(why) => Trial::test(name, || Ok(()))
                .with_ignored_flag(true)
                .with_kind(why.clone()),
        };
        trials.push(trial);
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// promtool from `PROMTOOL` or the PATH, or why there is none.
fn promtool() -> Result<PathBuf, String> {
    let path =
        std::env::var_os("PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(path),
        Ok(out) => Err(format!("promtool --version failed ({})", out.status)),
        Err(e) => Err(format!(
            "no promtool ({e}): apt-get install prometheus ships /usr/bin/promtool"
        )),
    }
}

fn run_promtool(path: &PathBuf, args: &[&str]) -> Result<(), Failed> {
    let out = Command::new(path)
        .args(args)
        .current_dir(assets())
        .output()
        .map_err(|e| Failed::from(format!("promtool does not run: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failed::from(format!(
            "promtool {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// The PromQL expressions of a rules file: `expr:` lines and the block lines under `expr: |`.
fn expressions(yaml: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" && rest != ">" {
            exprs.push(rest.trim_matches(['"', '\'']).to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            if next.trim().is_empty() || next.len() - next.trim_start().len() > indent {
                block.push_str(next.trim());
                block.push('\n');
                lines.next();
            } else {
                break;
            }
        }
        exprs.push(block);
    }
    exprs
}

/// A series an expression selects: its name and its label matchers (`=` values, `=~`
/// alternatives); `!=` and `!~` select by absence and are not checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    name: String,
    labels: Vec<(String, Vec<String>)>,
}

fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("keysync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut labels = Vec::new();
        rest = &tail[end..];
        if let Some(body) = rest.strip_prefix('{') {
            let close = body.find('}').unwrap_or(body.len());
            for matcher in body[..close].split(',') {
                let matcher = matcher.trim();
                if let Some((label, value)) = matcher.split_once("=~") {
                    let alternatives = value.trim().trim_matches('"').split('|');
                    labels.push((
                        label.trim().to_owned(),
                        alternatives.map(str::to_owned).collect(),
                    ));
                } else if let Some((label, value)) = matcher.split_once('=')
                    && !label.ends_with('!')
                {
                    let value = value.trim().trim_matches('"').to_owned();
                    labels.push((label.trim().to_owned(), vec![value]));
                }
            }
            rest = &body[close..];
        }
        out.push(Selector { name, labels });
    }
    out
}

/// Every sample of a scrape: its name and labels.
fn samples(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            let name = l[..name_end].to_owned();
            let labels = l[name_end..]
                .strip_prefix('{')
                .and_then(|b| b.split_once('}'))
                .map(|(body, _)| {
                    body.split("\",")
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, v)| (k.trim().to_owned(), v.trim_matches('"').to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            (name, labels)
        })
        .collect()
}

/// The fixture's snapshot with every conditional part present: a broker, a planned run, a
/// pending key, the hour's flash writes.
fn full_snapshot() -> keysync::engine::Snapshot {
    let mut snap = common::fixture::snapshot();
    snap.mqtt = Some(keysync::engine::MqttStatus {
        broker: "mqtt://mqtt.example.net:1883".into(),
        state: keysync::engine::MqttState::Connected,
        since: common::fixture::ago(60),
        last_error: None,
        fleet: None,
        channels: 1,
        counts: keysync::engine::MqttCounts::default(),
    });
    snap.sync.flash_writes_last_hour = Some(3);
    snap
}

fn scrape(snap: keysync::engine::Snapshot) -> Result<String, Failed> {
    let (_tx, rx) = tokio::sync::watch::channel(snap);
    let registry = keysync::metrics::exposition::registry(rx);
    keysync::metrics::exposition::render(&registry)
        .map_err(|e| Failed::from(format!("cannot render: {e}")))
}

/// The value of the sample `name` (without labels) in a scrape.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn the_pending_key_age_and_the_release_budget_are_exported() -> Result<(), Failed> {
    let text = scrape(full_snapshot())?;
    let offered = common::fixture::ago(26 * 3600)
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Failed::from(e.to_string()))?
        .as_secs_f64();
    let got = value(&text, "keysync_keys_pending_oldest_timestamp_seconds");
    if got != Some(offered) {
        return Err(format!("pending since {got:?}, not {offered}:\n{text}").into());
    }
    if value(&text, "keysync_lora_restarts_budget_per_hour") != Some(4.0) {
        return Err(format!("no release budget of 4:\n{text}").into());
    }
    // No pending key, no series: the alert cannot fire on a stale timestamp.
    let mut none = full_snapshot();
    for n in std::sync::Arc::make_mut(&mut none.nodes) {
        n.record.pending = None;
        n.record.pending_since = None;
    }
    let text = scrape(none)?;
    if text.contains("keysync_keys_pending_oldest") {
        return Err(format!("a pending age without a pending key:\n{text}").into());
    }
    Ok(())
}

fn every_series_the_rules_use_is_one_keysync_exports() -> Result<(), Failed> {
    let yaml = std::fs::read_to_string(assets().join("keysync-alerts.yml"))
        .map_err(|e| Failed::from(format!("cannot read the rules: {e}")))?;
    let exprs = expressions(&yaml);
    if exprs.len() < 8 {
        return Err(format!("only {} expressions read from the rules", exprs.len()).into());
    }
    let text = scrape(full_snapshot())?;
    let exported = samples(&text);
    let used: BTreeSet<Selector> = exprs.iter().flat_map(|e| selectors(e)).collect();
    let mut missing = Vec::new();
    for s in &used {
        let found = s.labels.iter().fold(
            exported.iter().filter(|(n, _)| *n == s.name).count() > 0,
            |ok, (label, values)| {
                ok && values.iter().all(|v| {
                    exported
                        .iter()
                        .any(|(n, ls)| *n == s.name && ls.iter().any(|(k, x)| k == label && x == v))
                })
            },
        );
        if !found {
            missing.push(format!("{s:?}"));
        }
    }
    if used.len() < 10 {
        return Err(format!("only {} selectors read: {used:?}", used.len()).into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the rules use series keysync does not export:\n{}\n\nexported:\n{text}",
            missing.join("\n")
        )
        .into())
    }
}
