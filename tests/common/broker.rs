//! A real MQTT broker for tests: mosquitto on a free loopback port with its own configuration
//! in a temporary directory, stopped when dropped. Tests that use it carry
//! `cfg_attr(no_mosquitto, ignore = …)` (see build.rs). The MQTT bench includes this file too.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

/// How long a test client waits for the broker to accept it.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

pub struct Broker {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The mosquitto binary: on PATH, or where Debian installs it.
fn mosquitto() -> String {
    for p in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if std::path::Path::new(p).is_file() {
            return p.to_string();
        }
    }
    "mosquitto".to_string()
}

impl Broker {
    /// Starts mosquitto and waits until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // A free port: bind, read it, let go; mosquitto takes it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).expect("config file");
        writeln!(
            f,
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning"
        )
        .expect("config written");
        let mut child = Command::new(mosquitto())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto starts (apt-get install mosquitto)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            let exited = child.try_wait().ok().flatten();
            assert!(exited.is_none(), "mosquitto exited: {exited:?}");
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            addr,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// A plain MQTT client, connected, for a test to publish as a gateway (or a hostile
    /// broker user) would.
    pub async fn client(&self, name: &str) -> Publisher {
        let mut options = MqttOptions::new(name, "127.0.0.1", self.addr.port());
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 64);
        loop {
            match tokio::time::timeout(CONNECT_WAIT, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("test client could not connect: {other:?}"),
            }
        }
        let pump = tokio::spawn(pump(events));
        Publisher { client, pump }
    }
}

async fn pump(mut events: EventLoop) {
    while events.poll().await.is_ok() {}
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's own connection to the broker.
pub struct Publisher {
    pub client: AsyncClient,
    pump: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish queued");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.pump.abort();
    }
}
