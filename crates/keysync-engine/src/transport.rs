//! Where the radio is and how its bytes reach keysync: the firmware's TCP port (a Pi's
//! meshtasticd, a Wi-Fi radio) or a serial port (a radio on USB). Both are one byte stream to
//! the link supervisor, which puts its own codec on top; what differs is opening the stream,
//! the wake-up a serial radio wants, and how the end of the stream is named.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use super::codec::MAGIC_2;

/// The firmware's serial console speed (`SERIAL_BAUD`).
pub const DEFAULT_BAUD: u32 = 115_200;

/// Sent before the first `want_config_id` on a serial port: START2 bytes wake a radio whose
/// UART sleeps and leave its frame parser hunting for START1 whatever it held (StreamAPI.cpp
/// keeps a half-read header across clients; the Python client sends the same 32 bytes).
pub const WAKE_UP: [u8; 32] = [MAGIC_2; 32];
/// How long the radio gets after the wake-up before the first frame.
pub const WAKE_UP_SETTLE: Duration = Duration::from_millis(100);

/// Where the radio is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port` of the firmware's TCP API.
    Tcp(String),
    /// A serial device (`/dev/ttyACM0`, a `/dev/serial/by-id/…` link), opened anew on each
    /// connect so that a radio plugged in again under the same name is found.
    Serial { path: PathBuf, baud: u32 },
}

impl Endpoint {
    pub fn is_serial(&self) -> bool {
        matches!(self, Self::Serial { .. })
    }
}

impl From<String> for Endpoint {
    fn from(host: String) -> Self {
        Self::Tcp(host)
    }
}

impl From<&str> for Endpoint {
    fn from(host: &str) -> Self {
        Self::Tcp(host.to_owned())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(host) => f.write_str(host),
            Self::Serial { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// An open connection to the radio.
#[derive(Debug)]
pub enum RadioStream {
    Tcp(TcpStream),
    Serial(SerialStream),
}

impl RadioStream {
    /// What to write before the first frame of a session, if anything.
    pub fn wake_up(&self) -> Option<&'static [u8]> {
        match self {
            Self::Tcp(_) => None,
            Self::Serial(_) => Some(&WAKE_UP),
        }
    }

    /// Sends the wake-up, if this transport wants one, and gives the radio time to wake.
    pub async fn wake(&mut self) -> io::Result<()> {
        if let Some(bytes) = self.wake_up() {
            self.write_all(bytes).await?;
            self.flush().await?;
            tokio::time::sleep(WAKE_UP_SETTLE).await;
        }
        Ok(())
    }

    /// Lets go of the device before it is closed: a serial port opened exclusively (TIOCEXCL)
    /// stays exclusive while any other descriptor of it is open, which would lock out the next
    /// open of a process without CAP_SYS_ADMIN.
    pub fn release(&mut self) {
        if let Self::Serial(port) = self
            && let Err(e) = port.set_exclusive(false)
        {
            log::debug!(target: "keysync::link", "could not release the serial port: {e}");
        }
    }

    /// How an I/O error ends a session on this transport: a serial device that reports an
    /// error or ends its stream was unplugged (or its driver let go of it).
    pub fn cause_of(&self, err: &io::Error) -> CloseCause {
        match self {
            Self::Serial(_) if device_gone(err) => CloseCause::DeviceGone,
            _ => CloseCause::from_io(err),
        }
    }

    /// How the end of the stream is named on this transport.
    pub fn eof_cause(&self) -> CloseCause {
        match self {
            Self::Tcp(_) => CloseCause::ClosedByRadio,
            Self::Serial(_) => CloseCause::DeviceGone,
        }
    }
}

/// The errno values with which a tty whose device went away answers.
fn device_gone(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EIO | libc::ENXIO | libc::ENODEV | libc::ENOENT)
    ) || matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::NotFound
    )
}

/// Opens the endpoint. TCP gets keepalive and no Nagle; a serial port is opened raw, 8N1,
/// exclusively (as the Python client opens it), so no second program talks over keysync.
pub async fn open(endpoint: &Endpoint) -> Result<RadioStream, CloseCause> {
    match endpoint {
        Endpoint::Tcp(host) => {
            let stream = TcpStream::connect(host.as_str())
                .await
                .map_err(|e| CloseCause::from_io(&e))?;
            if let Err(e) = tune_socket(&stream) {
                log::debug!(target: "keysync::link", "could not set TCP keepalive: {e}");
            }
            Ok(RadioStream::Tcp(stream))
        }
        Endpoint::Serial { path, baud } => {
            let name = path.to_string_lossy();
            let port = tokio_serial::new(name.as_ref(), *baud)
                .open_native_async()
                .map_err(|e| serial_open_cause(&e))?;
            Ok(RadioStream::Serial(port))
        }
    }
}

/// Why a serial port did not open, in the words the operator needs.
fn serial_open_cause(e: &tokio_serial::Error) -> CloseCause {
    use tokio_serial::ErrorKind as K;
    match e.kind {
        K::Io(io::ErrorKind::NotFound) => CloseCause::DeviceGone,
        K::Io(io::ErrorKind::PermissionDenied) => CloseCause::Io(
            "permission denied (is the user in the dialout group? see the README)".into(),
        ),
        K::NoDevice => CloseCause::Io(format!(
            "the port is busy: another program holds it ({})",
            e.description
        )),
        _ => CloseCause::Io(e.description.clone()),
    }
}

fn tune_socket(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let keepalive = keepalive.with_retries(3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

impl AsyncRead for RadioStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Serial(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RadioStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Serial(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Serial(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Serial(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// Nothing listens at the address (the radio is rebooting, or the port is wrong).
    Refused,
    /// The TCP connect did not finish in time.
    ConnectTimeout,
    /// The radio closed the socket (EOF): another client, idle close, reboot.
    ClosedByRadio,
    /// The connection was reset.
    Reset,
    /// No frame for three heartbeat intervals on firmware that always answers heartbeats.
    Stalled,
    /// `config_complete_id` did not arrive in time.
    ConfigTimeout,
    /// The radio said something the protocol does not allow.
    Protocol(String),
    /// Any other socket error.
    Io(String),
    /// The operator asked for a fresh connection.
    Requested,
    /// keysync is shutting down.
    Shutdown,
    /// The serial device went away (a USB unplug) or is not there to open.
    DeviceGone,
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused => f.write_str("connection refused"),
            Self::ConnectTimeout => f.write_str("connect timed out"),
            Self::ClosedByRadio => f.write_str("closed by radio"),
            Self::Reset => f.write_str("connection reset"),
            Self::Stalled => f.write_str("stalled (no frame for 3 heartbeats)"),
            Self::ConfigTimeout => f.write_str("config download timed out"),
            Self::Protocol(why) => write!(f, "protocol error: {why}"),
            Self::Io(why) => write!(f, "i/o error: {why}"),
            Self::Requested => f.write_str("reconnect requested"),
            Self::Shutdown => f.write_str("shut down"),
            Self::DeviceGone => f.write_str("device gone"),
        }
    }
}

impl CloseCause {
    /// One snake_case word per kind of cause, in [`Self::index`] order (metrics labels, JSON).
    pub const IDS: [&'static str; 11] = [
        "refused",
        "connect_timeout",
        "closed_by_radio",
        "reset",
        "stalled",
        "config_timeout",
        "protocol",
        "io",
        "requested",
        "shutdown",
        "device_gone",
    ];

    /// This cause's kind, an index into [`Self::IDS`].
    pub fn index(&self) -> usize {
        match self {
            Self::Refused => 0,
            Self::ConnectTimeout => 1,
            Self::ClosedByRadio => 2,
            Self::Reset => 3,
            Self::Stalled => 4,
            Self::ConfigTimeout => 5,
            Self::Protocol(_) => 6,
            Self::Io(_) => 7,
            Self::Requested => 8,
            Self::Shutdown => 9,
            Self::DeviceGone => 10,
        }
    }

    pub fn id(&self) -> &'static str {
        Self::IDS[self.index()]
    }

    pub(crate) fn from_io(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Self::Reset,
            io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => Self::ClosedByRadio,
            io::ErrorKind::TimedOut => Self::ConnectTimeout,
            _ => Self::Io(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tty_that_lost_its_device_is_device_gone() {
        for errno in [libc::EIO, libc::ENXIO, libc::ENODEV] {
            assert!(device_gone(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        assert!(!device_gone(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!device_gone(&io::Error::other("odd")));
    }

    #[test]
    fn a_missing_device_is_gone_and_a_forbidden_one_says_dialout() {
        let missing = tokio_serial::Error::new(
            tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound),
            "No such file or directory",
        );
        assert_eq!(serial_open_cause(&missing), CloseCause::DeviceGone);
        let forbidden = tokio_serial::Error::new(
            tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied),
            "Permission denied",
        );
        assert!(
            serial_open_cause(&forbidden)
                .to_string()
                .contains("dialout")
        );
    }

    #[test]
    fn endpoints_display_as_their_address() {
        assert_eq!(Endpoint::from("radio:4403").to_string(), "radio:4403");
        let serial = Endpoint::Serial {
            path: "/dev/ttyACM0".into(),
            baud: DEFAULT_BAUD,
        };
        assert_eq!(serial.to_string(), "/dev/ttyACM0");
        assert!(serial.is_serial());
    }
}
