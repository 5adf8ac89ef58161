//! The simulated radio on USB: the firmware's serial console behind a pseudo-terminal. Clients
//! open the pty's slave side through a symlink that names it, as `/dev/serial/by-id/…` names a
//! real radio. Unplugging closes the master, so the client's open port fails, and removes the
//! link; plugging in again makes a new pty under the same link. The session's serial quirks
//! (debug text, wake-up, no idle close) are in `session.rs`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

use super::session::{self, Port};
use super::{Current, Fault, Forget, ListenerCmd, Shared, apply_to_listener, rebind_at};

/// A plugged-in radio: both sides of its pty.
pub(super) struct Device {
    master: SerialStream,
    /// Held open by the radio itself, so that the master never reads a hang-up while no client
    /// has the port open (a real device does not notice its clients come and go either).
    slave: SerialStream,
    /// The pty's own name (`/dev/pts/N`).
    pub(super) tty: String,
}

impl Device {
    /// A new pty, and `link` pointing at it (replacing what the link pointed at before).
    pub(super) fn plug(link: &Path) -> io::Result<Self> {
        // Neither side is locked: the client's open takes the port's exclusive lock.
        let (master, slave) = SerialStream::pair().map_err(io::Error::from)?;
        let tty = slave
            .name()
            .ok_or_else(|| io::Error::other("the pseudo-terminal has no name"))?;
        remove_link(link)?;
        std::os::unix::fs::symlink(&tty, link)?;
        Ok(Self { master, slave, tty })
    }
}

fn remove_link(link: &Path) -> io::Result<()> {
    match std::fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The radio's serial port from plug-in to shutdown: serves the port, unplugs and plugs in
/// again on faults and crashes.
pub(super) async fn run(
    device: Device,
    link: PathBuf,
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<ListenerCmd>,
) {
    let mut plugged = Some(attach(device, &shared));
    let mut back_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = rebind_at(back_at) => {
                back_at = None;
                match Device::plug(&link) {
                    Ok(device) => {
                        log::info!(target: "keysync::sim", "plugged in again: {} -> {}", link.display(), device.tty);
                        shared.radio().down = false;
                        plugged = Some(attach(device, &shared));
                    }
                    Err(e) => {
                        log::error!(target: "keysync::sim", "cannot make the serial port {} again: {e}; retrying", link.display());
                        back_at = Some(Instant::now() + Duration::from_millis(200));
                    }
                }
            }
            () = shared.crashed.notified() => {
                pull(&mut plugged, &link).await;
                back_at = Some(Instant::now() + shared.config.reboot_time);
            }
            cmd = control.recv() => match cmd {
                None | Some(ListenerCmd::Shutdown) => {
                    pull(&mut plugged, &link).await;
                    return;
                }
                Some(ListenerCmd::Fault(fault, done)) => {
                    if let Some(down) = unplugs_for(&fault) {
                        log::info!(target: "keysync::sim", "fault: unplugged for {}", humantime::format_duration(down));
                        pull(&mut plugged, &link).await;
                        let forget = match fault {
                            Fault::Reboot { forget, .. } => forget,
                            _ => Forget::Nothing,
                        };
                        shared.go_down(forget);
                        back_at = Some(Instant::now() + down);
                    } else {
                        let mut current = plugged.take().map(|(c, slave)| (Some(c), slave));
                        if let Some((c, _)) = current.as_mut() {
                            apply_to_listener(fault, &shared, c, &mut None, &mut None).await;
                        }
                        plugged = current.and_then(|(c, slave)| c.map(|c| (c, slave)));
                    }
                    let _ = done.send(());
                }
            },
        }
    }
}

/// How long a fault takes the device away: a serial radio's reboot or refusal is its port
/// going away (native USB), and a dropped client is a USB blip.
fn unplugs_for(fault: &Fault) -> Option<Duration> {
    match fault {
        Fault::Unplug { down } | Fault::Reboot { down, .. } => Some(*down),
        Fault::Refuse { duration } => Some(*duration),
        Fault::Drop => Some(Duration::ZERO),
        _ => None,
    }
}

/// Serves the plugged-in device's master side as the radio's one serial client.
fn attach(device: Device, shared: &Arc<Shared>) -> (Current, SerialStream) {
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let kick = CancellationToken::new();
    let (cmds, cmd_rx) = mpsc::channel(8);
    let task = tokio::spawn(session::serve(
        Box::new(device.master),
        device.tty,
        Port::Serial,
        shared.clone(),
        kick.clone(),
        cmd_rx,
    ));
    (Current { kick, cmds, task }, device.slave)
}

/// Unplugs: the master closes (a client's open port errors out), then the name goes away.
async fn pull(plugged: &mut Option<(Current, SerialStream)>, link: &Path) {
    let Some((current, slave)) = plugged.take() else {
        return;
    };
    current.kick.cancel();
    let _ = current.task.await;
    drop(slave);
    if let Err(e) = remove_link(link) {
        log::warn!(target: "keysync::sim", "cannot remove {}: {e}", link.display());
    }
}
