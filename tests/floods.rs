//! Log floods: a radio or a client that repeats something without end gets a bounded number
//! of log lines — once a minute per kind, with a count — whatever the rate. Under systemd every
//! line lands in the journal. Each source is flooded for 10 s against the engine (in this
//! process, over real TCP), and the lines its logger took are counted.

mod common;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::*;
use keysync::engine;
use keysync::engine::ProxyConfig;
use meshtastic::Message as _;
use meshtastic::protobufs::PortNum;

const FLOOD: Duration = Duration::from_secs(10);

/// Every line logged in this test binary.
struct Lines(Mutex<Vec<String>>);

impl log::Log for Lines {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("keysync")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(format!("{} {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

fn lines() -> &'static Lines {
    static LINES: OnceLock<&'static Lines> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines: &'static Lines = Box::leak(Box::new(Lines(Mutex::new(Vec::new()))));
        log::set_logger(lines).expect("the only logger of this binary");
        log::set_max_level(log::LevelFilter::Info);
        lines
    })
}

/// Lines logged so far that contain `needle`.
fn count(needle: &str) -> usize {
    lines()
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

fn proxied(config: &mut keysync::engine::EngineConfig) {
    config.proxy = Some(ProxyConfig::new("127.0.0.1:0".parse().expect("addr")));
}

/// A radio on a real socket that answers each want_config with its number and the complete
/// id and, once it answered the handshake, sends QueueStatus
/// frames as fast as the socket takes them for `flood`; then only answers. Its address, and the count of frames it flooded when done.
async fn flooding_radio(flood: Duration) -> (std::net::SocketAddr, tokio::task::JoinHandle<u64>) {
    use futures::StreamExt;
    use keysync::engine::{RadioCodec, encode_raw};
    use meshtastic::protobufs::to_radio;
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("keysync connects");
        let (read, mut write) = stream.into_split();
        let (answers, mut to_send) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let mut frames = tokio_util::codec::FramedRead::new(read, RadioCodec::new());
            while let Some(Ok(msg)) = frames.next().await {
                let Some(to_radio::PayloadVariant::WantConfigId(nonce)) = msg.payload_variant
                else {
                    continue;
                };
                let out = common::raw::handshake_reply(0x0f00_d001, nonce);
                if answers.send(out).is_err() {
                    return;
                }
            }
        });
        let mut chunk = bytes::BytesMut::new();
        for _ in 0..1000 {
            encode_raw(
                &engine::queue_status(0, 16, 16, 0).encode_to_vec(),
                &mut chunk,
            )
            .expect("encodes");
        }
        // The handshake is answered before the flood (the startup sync uses its node list), so
        // that the flood meets a link that is up.
        for _ in 0..1 {
            let Some(answer) = to_send.recv().await else {
                return 0;
            };
            if write.write_all(&answer).await.is_err() {
                return 0;
            }
        }
        let until = tokio::time::Instant::now() + flood;
        let mut flooded = 0u64;
        loop {
            while let Ok(answer) = to_send.try_recv() {
                if write.write_all(&answer).await.is_err() {
                    return flooded;
                }
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
            if write.write_all(&chunk).await.is_err() {
                return flooded;
            }
            flooded += 1000;
        }
        while let Some(answer) = to_send.recv().await {
            if write.write_all(&answer).await.is_err() {
                break;
            }
        }
        flooded
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_radio_sending_queue_status_nonstop_gets_one_fell_behind_line_a_minute() {
    lines();
    let (addr, radio_task) = flooding_radio(FLOOD).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = seeded_store(&dir, &[]);
    let mut config = keysync::engine::EngineConfig::new(addr.to_string(), db);
    proxied(&mut config);
    let engine = keysync::engine::try_start(config, store).expect("starts");
    let mut snap = engine.snapshot.clone();
    nth_report(&mut snap, 1).await;
    // The flood runs for FLOOD from the first run's end; a little more lets the last lag show.
    tokio::time::sleep(FLOOD + Duration::from_millis(500)).await;
    let behind = count("frames behind the radio");
    let up = engine.snapshot.borrow().link.state.is_up();
    engine.quit().await;
    let frames = radio_task.await.expect("the radio ends");
    eprintln!("{frames} QueueStatus frames in {FLOOD:?}: {behind} 'fell behind' lines");
    assert!(frames > 100_000, "the flood was a flood: {frames} frames");
    assert!(
        (1..=2).contains(&behind),
        "one line per kind (the engine's, the proxy's) in the minute, not {behind}"
    );
    assert!(up, "the link held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_texts_nonstop_gets_one_over_the_limit_line_a_minute() {
    lines();
    let mut h = Harness::start(sim_config(5), &[], proxied);
    h.report(1).await;
    let addr = h.snap.borrow().proxy_addr.expect("proxy address");
    let mut client = raw::RawClient::connect(addr).await;
    client.download(31).await;
    let until = tokio::time::Instant::now() + FLOOD;
    let mut texts = 0u64;
    while tokio::time::Instant::now() < until {
        client
            .packet(engine::BROADCAST, PortNum::TextMessageApp, b"spam".to_vec())
            .await;
        texts += 1;
        // Its answers are read now and then, so the proxy does not close it as stuck.
        if texts.is_multiple_of(64) {
            while tokio::time::timeout(Duration::ZERO, client.recv())
                .await
                .is_ok_and(|f| f.is_some())
            {}
        }
    }
    let over = count("over the firmware's limit");
    eprintln!("{texts} texts in {FLOOD:?}: {over} 'over the limit' lines");
    assert!(texts > 1000, "the flood was a flood: {texts} texts");
    assert_eq!(over, 1, "one line in the minute, not {over}");
    h.quit().await;
}
