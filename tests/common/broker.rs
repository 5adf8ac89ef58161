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
    /// The TLS listener, when started with one.
    pub tls_addr: Option<SocketAddr>,
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

/// A broker certificate for `localhost` and the authority that signed it, in PEM.
pub struct Pki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Pki {
    /// A new authority named `name` and a certificate it signed for `localhost`.
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("broker key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("broker params")
            .signed_by(&key, &issuer)
            .expect("broker certificate");
        Self {
            ca: ca_cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A free loopback port: bind, read it, let go; mosquitto takes it a moment later.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Broker {
    /// Starts mosquitto and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Also a TLS listener (`tls_addr`) with `pki`'s certificate for `localhost`.
    pub fn start_tls(pki: &Pki) -> Self {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&Pki>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).expect("config file");
        writeln!(
            f,
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning"
        )
        .expect("config written");
        let tls_addr = pki.map(|pki| {
            let (cert, key) = (dir.path().join("broker.pem"), dir.path().join("broker.key"));
            std::fs::write(&cert, &pki.cert).expect("certificate written");
            std::fs::write(&key, &pki.key).expect("key written");
            let tls_port = free_port();
            writeln!(
                f,
                "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}",
                cert.display(),
                key.display()
            )
            .expect("config written");
            SocketAddr::from(([127, 0, 0, 1], tls_port))
        });
        drop(f);
        let mut child = Command::new(mosquitto())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto starts (apt-get install mosquitto)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        for listening in std::iter::once(addr).chain(tls_addr) {
            while TcpStream::connect(listening).is_err() {
                let exited = child.try_wait().ok().flatten();
                assert!(exited.is_none(), "mosquitto exited: {exited:?}");
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not listen on {listening}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self {
            addr,
            tls_addr,
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
