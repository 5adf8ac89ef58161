//! The Python programs the tests run as real clients: the reference `meshtastic` client and
//! library, and the `contact` curses client. Each is found through its environment variable,
//! then its venv under `target/` (where `.ci/run` installs it), then `PATH`; when none is there,
//! it is installed into that venv (`python3 -m venv`, `pip install`), and a test fails saying
//! why if it cannot be.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A program from PyPI the tests run: where to look for it and how to install it.
pub struct PyTool {
    /// What it is, for messages.
    what: &'static str,
    /// An environment variable that points at it.
    env_var: &'static str,
    /// Its virtual environment under `target/`.
    venv: &'static str,
    /// What `pip install` is given.
    requirement: &'static str,
    /// The command it installs.
    command: &'static str,
    /// Whether a command of that name on `PATH` is it (a name as plain as `contact` is not).
    from_path: bool,
}

/// The reference client and library; `target/pyenv` holds the Python the bots run with.
pub const MESHTASTIC: PyTool = PyTool {
    what: "the Python meshtastic client",
    env_var: "KEYSYNC_MESHTASTIC",
    venv: "pyenv",
    requirement: "meshtastic",
    command: "meshtastic",
    from_path: true,
};

/// pdxlocations' curses client, a terminal client many operators use; the version whose
/// screen the test reads.
pub const CONTACT: PyTool = PyTool {
    what: "the contact curses client",
    env_var: "KEYSYNC_CONTACT",
    venv: "contact-env",
    requirement: "contact==1.7.2",
    command: "contact",
    from_path: false,
};

impl PyTool {
    pub fn venv(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(self.venv)
    }

    fn find(&self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_var) {
            return Some(PathBuf::from(p));
        }
        let venv = self.venv().join("bin").join(self.command);
        if venv.exists() {
            return Some(venv);
        }
        let on_path = self.from_path
            && Command::new(self.command)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        on_path.then(|| PathBuf::from(self.command))
    }

    /// Runs one provisioning step; says what failed, with its output.
    fn step(&self, step: &str, cmd: &mut Command) -> Result<(), String> {
        let what = self.what;
        let out = cmd
            .output()
            .map_err(|e| format!("cannot provision {what}: {step} did not start: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "cannot provision {what}: {step} failed ({}):\n{}{}\n\
             Install it yourself (.ci/run shows how) or point {} at it.",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.env_var
        ))
    }

    /// The command, installed into its venv first if it is nowhere; why not, when it cannot be.
    pub fn provision(&self) -> Result<PathBuf, String> {
        // The tests of a file may ask at once; one installs, the others wait for it.
        static PROVISION: Mutex<()> = Mutex::new(());
        let _one_at_a_time = PROVISION
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = self.find() {
            return Ok(found);
        }
        let env = self.venv();
        eprintln!("installing {} into {} (once)", self.what, env.display());
        self.step(
            "python3 -m venv",
            Command::new("python3").args(["-m", "venv"]).arg(&env),
        )?;
        self.step(
            &format!("pip install {}", self.requirement),
            Command::new(env.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                self.requirement,
            ]),
        )?;
        let installed = env.join("bin").join(self.command);
        if !installed.exists() {
            return Err(format!(
                "pip installed {} but {} is missing",
                self.requirement,
                installed.display()
            ));
        }
        Ok(installed)
    }

    /// [`PyTool::provision`], panicking with the reason when it cannot be had.
    pub fn required(&self) -> PathBuf {
        self.provision().unwrap_or_else(|why| panic!("{why}"))
    }
}

pub fn required_cli() -> PathBuf {
    MESHTASTIC.required()
}

pub fn python() -> PathBuf {
    let venv = MESHTASTIC.venv().join("bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Spawns `cmd`, reads its stderr until a line contains `marker`, and returns the address that
/// follows the marker; the rest of the log keeps being collected.
pub fn spawn_logged(cmd: &mut Command, marker: &str) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keysync starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = loop {
        let line = lines
            .next()
            .expect("keysync logs its address before exiting")
            .expect("utf-8 log");
        log.lock().expect("log").push(line.clone());
        if let Some(rest) = line.split(marker).nth(1) {
            let host: String = rest.chars().take_while(|c| *c != ':').collect();
            let port: String = rest[host.len() + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            break format!("{host}:{port}");
        }
    };
    let _reader = collect_into(lines, log.clone());
    (child, addr, log)
}

/// Keeps appending the lines still to come to `sink`, from a thread of their own.
pub fn collect_into<R: BufRead + Send + 'static>(
    lines: std::io::Lines<R>,
    sink: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().expect("log").push(line);
        }
    })
}

/// tests/python/bot.py, a bot on the Python library, connected to `addr` and told to answer
/// `answers` texts from the mesh; what it prints is collected as it comes.
pub struct Bot {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: [std::thread::JoinHandle<()>; 2],
}

pub fn start_bot(addr: &str, answers: usize) -> Bot {
    let (host, port) = addr.split_once(':').expect("host:port");
    let mut child = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/bot.py"))
        .args([host, port, &answers.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bot starts");
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let readers = [
        collect_into(BufReader::new(stdout).lines(), out.clone()),
        collect_into(BufReader::new(stderr).lines(), err.clone()),
    ];
    Bot {
        child,
        out,
        err,
        readers,
    }
}

impl Bot {
    /// The first line the bot printed that starts with `prefix`.
    pub fn said(&self, prefix: &str) -> Option<String> {
        self.out
            .lock()
            .expect("bot output")
            .iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
    }

    /// Waits for the bot to end (it gives up after 60 s) and returns what it printed; panics
    /// with its output if it did not get what it waited for.
    pub fn finish(mut self) -> String {
        let status = self.child.wait().expect("the bot ends");
        for reader in self.readers {
            reader.join().expect("the bot's output is read to its end");
        }
        let out = self.out.lock().expect("bot output").join("\n");
        assert!(
            status.success(),
            "the bot failed ({status}): {out}\n{}",
            self.err.lock().expect("bot errors").join("\n")
        );
        out
    }
}

/// What `meshtastic --host HOST ARG` prints; panics with its output when it fails.
pub fn run_client(cli: &PathBuf, host: &str, arg: &str) -> String {
    run_client_args(cli, host, &[arg])
}

/// What `meshtastic --host HOST ARGS…` prints; panics with its output when it fails.
pub fn run_client_args(cli: &PathBuf, host: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(cli)
        .args(["--host", host])
        .args(args)
        .output()
        .expect("the meshtastic client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "meshtastic {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
