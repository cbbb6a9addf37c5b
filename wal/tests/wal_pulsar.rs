//! The Pulsar sink and source against a real broker.
//!
//! Needs a running Apache Pulsar: `out=$(scripts/services up pulsar) && eval "$out"`, which
//! exports PULSAR_URL and PULSAR_ADMIN_URL. Without them, or with the broker unreachable,
//! every test here fails (never skips). The tests take a lock so that they run one at a time
//! whatever `--test-threads` says: two of them kill and restart the broker.
#![cfg(feature = "pulsar")]

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use millpond_wal::batch::{self, Decoded};
use millpond_wal::pulsar::{
    wal_topic, PulsarCompression, PulsarSettings, PulsarSink, PulsarSource,
};
use millpond_wal::{Batch, Error, StoredBatch, WalPosition, WalSink, WalSource};

const HOW_TO_START: &str =
    "start the broker first: out=$(scripts/services up pulsar) && eval \"$out\"";

/// Held by every test: one at a time, since some kill the broker.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn env_or_fail(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: these tests need a real Apache Pulsar; {HOW_TO_START}"),
    }
}

/// PULSAR_URL, after checking that the broker's port answers.
fn pulsar_url() -> String {
    let url = env_or_fail("PULSAR_URL");
    let host_port = url
        .split("://")
        .nth(1)
        .unwrap_or_else(|| panic!("PULSAR_URL={url} is not a pulsar:// URL"))
        .trim_end_matches('/')
        .to_string();
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok());
    assert!(
        reachable,
        "the Pulsar broker at {url} is unreachable; {HOW_TO_START}"
    );
    url
}

fn unique_topic(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    wal_topic(
        "public",
        "default",
        &format!("test-{test}"),
        &format!("{}-{nanos:x}-{n}", std::process::id()),
    )
}

fn settings(topic: &str) -> PulsarSettings {
    PulsarSettings {
        operation_timeout: Duration::from_secs(20),
        max_retries: 8,
        ..PulsarSettings::for_topic(pulsar_url(), topic)
    }
}

/// A framed batch of `count` records starting at `first_lsn`; records of up to 120 bytes (so
/// each length is a one-byte varint), compressible or not.
fn framed(first_lsn: u64, count: u32, compressible: bool) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut x = first_lsn.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in 0..count {
        let len = ((first_lsn + i as u64) % 120) as usize;
        payload.push(len as u8);
        for j in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            payload.push(if compressible {
                b'a' + (j % 4) as u8
            } else {
                x as u8
            });
        }
    }
    let mut out = Vec::new();
    batch::encode(first_lsn, count, 0, &payload, &mut out);
    out
}

fn first_lsn_of(bytes: &[u8]) -> u64 {
    match batch::decode(bytes, || "pulsar message".into()).expect("a valid WAL batch") {
        Decoded::Batch(header, _) => header.first_lsn,
        Decoded::Incomplete => panic!("a torn batch in the topic"),
    }
}

fn append(
    sink: &mut PulsarSink,
    first_lsn: u64,
    count: u32,
    bytes: &[u8],
) -> Result<WalPosition, Error> {
    sink.append(Batch {
        first_lsn,
        last_lsn: first_lsn + count as u64 - 1,
        bytes,
    })
}

/// Reads the whole topic (bounded: at most `limit` batches and `deadline`).
fn read_all(source: &mut PulsarSource, limit: usize, deadline: Duration) -> Vec<StoredBatch> {
    let start = Instant::now();
    let mut out = Vec::new();
    while let Some(b) = source.next_batch().expect("reading the topic") {
        out.push(b);
        assert!(out.len() <= limit, "more than {limit} batches in the topic");
        assert!(
            start.elapsed() < deadline,
            "reading took longer than {deadline:?}"
        );
    }
    out
}

fn key(p: &WalPosition) -> (u64, u64, i32) {
    match p {
        WalPosition::Pulsar {
            ledger_id,
            entry_id,
            batch_index,
            ..
        } => (*ledger_id, *entry_id, *batch_index),
        other => panic!("not a Pulsar position: {other:?}"),
    }
}

fn assert_increasing(batches: &[StoredBatch]) {
    for w in batches.windows(2) {
        assert!(
            key(&w[0].position) < key(&w[1].position),
            "positions not increasing: {:?} then {:?}",
            w[0].position,
            w[1].position
        );
    }
}

fn scripts_services() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services")
}

fn unload_topic(topic: &str) {
    let admin = env_or_fail("PULSAR_ADMIN_URL");
    let path = topic.strip_prefix("persistent://").unwrap();
    let status = Command::new("curl")
        .args(["-fsS", "-m", "30", "-X", "PUT"])
        .arg(format!("{admin}/admin/v2/persistent/{path}/unload"))
        .status()
        .expect("running curl");
    assert!(status.success(), "unloading {topic} failed: {status}");
}

#[test]
fn round_trip_from_start_and_from_a_position() {
    let _serial = serial();
    let topic = unique_topic("roundtrip");
    let t0 = Instant::now();
    let mut sink = PulsarSink::connect(settings(&topic)).expect("connect");
    let mut sent = Vec::new();
    let mut lsn = 1;
    for i in 0..60u32 {
        let count = 1 + i % 7;
        let bytes = framed(lsn, count, i % 2 == 0);
        let pos = append(&mut sink, lsn, count, &bytes).expect("append");
        sent.push((pos, bytes));
        lsn += count as u64;
    }
    for w in sent.windows(2) {
        assert!(
            key(&w[0].0) < key(&w[1].0),
            "append positions not increasing"
        );
    }
    eprintln!("appended 60 batches in {:?}", t0.elapsed());

    let t1 = Instant::now();
    let mut source = PulsarSource::open(settings(&topic), None).expect("open");
    let read = read_all(&mut source, 1000, Duration::from_secs(120));
    eprintln!("read them back in {:?}", t1.elapsed());
    assert_eq!(read.len(), sent.len());
    for (got, (pos, bytes)) in read.iter().zip(&sent) {
        assert_eq!(&got.position, pos);
        assert_eq!(&got.bytes, bytes);
    }
    assert_increasing(&read);
    // At the end it stays at the end, and sees what is appended later.
    assert!(source.next_batch().unwrap().is_none());
    let late = framed(lsn, 1, true);
    let late_pos = append(&mut sink, lsn, 1, &late).expect("append");
    let got = source.next_batch().unwrap().expect("the later batch");
    assert_eq!((got.position, got.bytes), (late_pos, late));
    assert!(source.next_batch().unwrap().is_none());

    // From a recorded position, inclusive.
    for from in [0, 25, 59] {
        let mut source = PulsarSource::open(settings(&topic), Some(&sent[from].0)).expect("open");
        let read = read_all(&mut source, 1000, Duration::from_secs(60));
        assert_eq!(read.len(), sent.len() - from + 1, "from batch {from}");
        for (got, (pos, bytes)) in read.iter().zip(&sent[from..]) {
            assert_eq!(&got.position, pos);
            assert_eq!(&got.bytes, bytes);
        }
    }
    // A Local position is refused.
    let local = WalPosition::Local {
        segment: 0,
        offset: 0,
    };
    assert!(matches!(
        PulsarSource::open(settings(&topic), Some(&local)),
        Err(Error::Invalid { .. })
    ));
    eprintln!("round trip total {:?}", t0.elapsed());
}

#[test]
fn empty_topic_and_end_after_topic_unload() {
    let _serial = serial();
    let t0 = Instant::now();
    // A topic nobody wrote to: the end at once.
    let topic = unique_topic("empty");
    let mut source = PulsarSource::open(settings(&topic), None).expect("open");
    assert!(source.next_batch().unwrap().is_none());
    drop(source);

    // After an unload the broker reloads the topic into a new, empty ledger: the end must
    // still be found after the old ledger's messages, not before them.
    let topic = unique_topic("unload");
    let mut sink = PulsarSink::connect(settings(&topic)).expect("connect");
    let mut sent = Vec::new();
    for lsn in 1..=5 {
        let bytes = framed(lsn, 1, true);
        sent.push((append(&mut sink, lsn, 1, &bytes).expect("append"), bytes));
    }
    drop(sink);
    unload_topic(&topic);
    let mut source = PulsarSource::open(settings(&topic), None).expect("open");
    let read = read_all(&mut source, 100, Duration::from_secs(60));
    let got: Vec<_> = read
        .iter()
        .map(|b| (b.position.clone(), b.bytes.clone()))
        .collect();
    assert_eq!(got, sent);
    let mut source = PulsarSource::open(settings(&topic), Some(&sent[3].0)).expect("open");
    let read = read_all(&mut source, 100, Duration::from_secs(60));
    assert_eq!(read.len(), 2);
    eprintln!("empty/unload total {:?}", t0.elapsed());
}

#[test]
fn compression_none_lz4_zstd_round_trip() {
    for compression in [
        PulsarCompression::None,
        PulsarCompression::Lz4,
        PulsarCompression::Zstd,
    ] {
        let t0 = Instant::now();
        let topic = unique_topic(&format!("{compression:?}").to_lowercase());
        let settings = PulsarSettings {
            compression,
            ..settings(&topic)
        };
        let mut sink = PulsarSink::connect(settings.clone()).expect("connect");
        let mut sent = Vec::new();
        let mut lsn = 1;
        for i in 0..20u32 {
            // up to ~20 KB batches, half compressible
            let count = 1 + (i * 37) % 200;
            let bytes = framed(lsn, count, i % 2 == 1);
            sent.push((
                append(&mut sink, lsn, count, &bytes).expect("append"),
                bytes,
            ));
            lsn += count as u64;
        }
        let mut source = PulsarSource::open(settings, None).expect("open");
        let read = read_all(&mut source, 100, Duration::from_secs(60));
        let got: Vec<_> = read
            .iter()
            .map(|b| (b.position.clone(), b.bytes.clone()))
            .collect();
        assert!(
            got == sent,
            "{compression:?}: bytes differ after the round trip"
        );
        eprintln!(
            "{compression:?}: 20 batches round trip in {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn second_writer_is_fenced_until_the_first_is_gone() {
    let _serial = serial();
    let topic = unique_topic("fence");
    let mut first = PulsarSink::connect(settings(&topic)).expect("first connect");
    append(&mut first, 1, 1, &framed(1, 1, true)).expect("first append");

    let t0 = Instant::now();
    match PulsarSink::connect(settings(&topic)) {
        Err(Error::Fenced { reason }) => {
            eprintln!("second writer fenced in {:?}: {reason}", t0.elapsed())
        }
        other => panic!("second writer not fenced: {other:?}"),
    }
    // The first one is unaffected.
    append(&mut first, 2, 1, &framed(2, 1, true)).expect("first append after the attempt");

    // Once the first is dropped (its producer closed), a new writer takes over at once.
    drop(first);
    let t1 = Instant::now();
    let mut third = PulsarSink::connect(settings(&topic)).expect("takeover after drop");
    eprintln!("takeover after drop in {:?}", t1.elapsed());
    append(&mut third, 3, 1, &framed(3, 1, true)).expect("append after takeover");

    // A zombie: `third` loses its producer (the broker unloads the topic, as on a broker
    // crash or a bundle move) and, while it is idle, a new owner connects. The zombie's next
    // append re-creates its producer, which the broker refuses: Fenced, and it stays fenced.
    unload_topic(&topic);
    let mut owner = PulsarSink::connect(settings(&topic)).expect("new owner after the unload");
    let t2 = Instant::now();
    match append(&mut third, 4, 1, &framed(4, 1, true)) {
        Err(Error::Fenced { reason }) => eprintln!("zombie fenced in {:?}: {reason}", t2.elapsed()),
        other => panic!("the zombie's append was not fenced: {other:?}"),
    }
    assert!(matches!(
        append(&mut third, 4, 1, &framed(4, 1, true)),
        Err(Error::Fenced { .. })
    ));
    append(&mut owner, 4, 1, &framed(4, 1, true)).expect("the owner appends");
    drop(third);
    drop(owner);

    let mut source = PulsarSource::open(settings(&topic), None).expect("open");
    let lsns: Vec<u64> = read_all(&mut source, 100, Duration::from_secs(60))
        .iter()
        .map(|b| first_lsn_of(&b.bytes))
        .collect();
    assert_eq!(lsns, vec![1, 2, 3, 4]);
}

#[test]
fn broker_killed_and_restarted_while_appending() {
    let _serial = serial();
    let topic = unique_topic("restart");
    let mut sink = PulsarSink::connect(settings(&topic)).expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // (lsn, position, how long it took, when it returned) of every append that returned Ok
            let mut acked = Vec::new();
            let mut failures = Vec::new();
            let mut lsn = 1u64;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(400) {
                let bytes = framed(lsn, 3, lsn.is_multiple_of(2));
                let t = Instant::now();
                match append(&mut sink, lsn, 3, &bytes) {
                    Ok(pos) => {
                        acked.push((lsn, pos, t.elapsed(), Instant::now()));
                        lsn += 3;
                    }
                    // The outage outlasted the retry policy: the same batch again.
                    Err(Error::Unavailable { reason }) => failures.push((lsn, t.elapsed(), reason)),
                    Err(e) => panic!("append of LSN {lsn} failed with {e}"),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (acked, failures)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let status = Command::new(scripts_services())
        .arg("restart-pulsar")
        .stdout(Stdio::null())
        .status()
        .expect("running scripts/services restart-pulsar");
    assert!(
        status.success(),
        "scripts/services restart-pulsar failed: {status}"
    );
    let restarted = Instant::now();
    eprintln!("broker killed and back healthy in {:?}", t0.elapsed());
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (acked, failures) = appender.join().expect("the appender panicked");

    let slowest = acked.iter().map(|a| a.2).max().unwrap_or_default();
    eprintln!(
        "{} appends acknowledged, {} returned Unavailable, slowest acknowledged append {:?}",
        acked.len(),
        failures.len(),
        slowest
    );
    for (lsn, took, reason) in &failures {
        eprintln!("  LSN {lsn}: Unavailable after {took:?}: {reason}");
    }
    let before = acked.iter().filter(|a| a.3 < t0).count();
    let after = acked.iter().filter(|a| a.3 > restarted).count();
    eprintln!("{before} acknowledged before the kill, {after} after the broker was back");
    assert!(
        before > 10 && after > 10,
        "appends before and after the restart"
    );

    let t1 = Instant::now();
    let mut source = PulsarSource::open(settings(&topic), None).expect("open");
    let read = read_all(&mut source, 1_000_000, Duration::from_secs(300));
    eprintln!("read {} messages back in {:?}", read.len(), t1.elapsed());
    assert_increasing(&read);
    // Dedup by LSN: a repeated batch must repeat an earlier one, never jump back otherwise.
    let mut first_seen: BTreeMap<u64, WalPosition> = BTreeMap::new();
    let mut by_position: HashMap<WalPosition, u64> = HashMap::new();
    let mut highest = 0;
    let mut duplicates = 0;
    for b in &read {
        let lsn = first_lsn_of(&b.bytes);
        by_position.insert(b.position.clone(), lsn);
        if lsn <= highest {
            assert!(
                first_seen.contains_key(&lsn),
                "LSN {lsn} out of order after {highest}"
            );
            duplicates += 1;
            continue;
        }
        assert_eq!(
            b.bytes,
            framed(lsn, 3, lsn.is_multiple_of(2)),
            "LSN {lsn} bytes differ"
        );
        first_seen.insert(lsn, b.position.clone());
        highest = lsn;
    }
    eprintln!("{duplicates} duplicates in the topic");
    // Every acknowledged batch is there, where append said, and in LSN order.
    let order: Vec<u64> = first_seen.keys().copied().collect();
    let mut expected_next = 1;
    for (lsn, pos, _, _) in &acked {
        assert_eq!(
            by_position.get(pos),
            Some(lsn),
            "acknowledged LSN {lsn} not at {pos:?}"
        );
        assert!(
            first_seen.contains_key(lsn),
            "acknowledged LSN {lsn} missing"
        );
        assert_eq!(*lsn, expected_next);
        expected_next += 3;
    }
    assert!(order.windows(2).all(|w| w[0] < w[1]));
}

/// The retention subscription's mark-delete position, from the broker's internal stats.
fn retention_mark_delete(topic: &str) -> Option<String> {
    let admin = env_or_fail("PULSAR_ADMIN_URL");
    let path = topic.strip_prefix("persistent://").unwrap();
    let out = Command::new("curl")
        .args(["-fsS", "-m", "30"])
        .arg(format!("{admin}/admin/v2/persistent/{path}/internalStats"))
        .output()
        .expect("running curl");
    assert!(out.status.success(), "internalStats of {topic} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let cursor = text.split("\"millpond-wal-retain\"").nth(1)?;
    let rest = cursor.split("\"markDeletePosition\"").nth(1)?;
    Some(rest.split('"').nth(1)?.to_string())
}

#[test]
fn truncate_below_acknowledges_on_the_retention_subscription() {
    let _serial = serial();
    let topic = unique_topic("truncate");
    let mut sink = PulsarSink::connect(settings(&topic)).expect("connect");
    // Created at connect, before any message.
    let initial = retention_mark_delete(&topic).expect("the retention subscription exists");
    let mut positions = Vec::new();
    for i in 0..10u64 {
        let lsn = 1 + 2 * i;
        let pos = append(&mut sink, lsn, 2, &framed(lsn, 2, true)).expect("append");
        positions.push(pos);
    }
    // Nothing wholly below LSN 2: nothing acknowledged.
    sink.truncate_below(2).expect("truncate");
    // Batches 0..=4 hold LSNs 1..=10: truncating below 11 acknowledges batch 4, and below 12
    // still batch 4 (batch 5 holds 11 and 12).
    sink.truncate_below(12).expect("truncate");
    let (ledger, entry, _) = key(&positions[4]);
    let expected = format!("{ledger}:{entry}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while Instant::now() < deadline {
        seen = retention_mark_delete(&topic);
        if seen.as_deref() == Some(expected.as_str()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen.as_deref(),
        Some(expected.as_str()),
        "mark-delete position (was {initial} at connect)"
    );
    // Reading is unaffected (the reader is not on that subscription).
    let mut source = PulsarSource::open(settings(&topic), None).expect("open");
    let read = read_all(&mut source, 100, Duration::from_secs(60));
    assert!(read.len() >= 5, "at most the acknowledged ledgers may go");
}

fn services(command: &str) {
    let status = Command::new(scripts_services())
        .arg(command)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running scripts/services {command}: {e}"));
    assert!(
        status.success(),
        "scripts/services {command} failed: {status}"
    );
}

#[test]
fn append_is_unavailable_while_the_broker_stays_down_then_recovers() {
    let _serial = serial();
    let topic = unique_topic("outage");
    let settings = PulsarSettings {
        operation_timeout: Duration::from_secs(3),
        max_retries: 2,
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        ..settings(&topic)
    };
    let mut sink = PulsarSink::connect(settings.clone()).expect("connect");
    let first = append(&mut sink, 1, 1, &framed(1, 1, true)).expect("append");

    services("kill-pulsar");
    let t0 = Instant::now();
    let during = append(&mut sink, 2, 1, &framed(2, 1, true));
    let took = t0.elapsed();
    // Start the broker again whatever happened, so that other tests find it.
    let t1 = Instant::now();
    services("start-pulsar");
    eprintln!("append with the broker down: {during:?} after {took:?}");
    eprintln!("broker back in {:?}", t1.elapsed());
    assert!(
        matches!(during, Err(Error::Unavailable { .. })),
        "expected Unavailable, got {during:?}"
    );
    assert!(
        took < Duration::from_secs(60),
        "the retry policy did not bound the append"
    );

    // The same sink goes on once the broker is back.
    let t2 = Instant::now();
    let second = append(&mut sink, 2, 1, &framed(2, 1, true)).expect("append after the outage");
    eprintln!("first append after the outage took {:?}", t2.elapsed());
    drop(sink);
    let mut source = PulsarSource::open(settings, None).expect("open");
    let read = read_all(&mut source, 100, Duration::from_secs(60));
    let got: Vec<_> = read
        .iter()
        .map(|b| (b.position.clone(), first_lsn_of(&b.bytes)))
        .collect();
    assert_eq!(got, vec![(first, 1), (second, 2)]);
}

/// The whole log through Pulsar: a writer whose flusher sends several batches per message
/// (`append_all`), commit markers, then replay from the topic rebuilds exactly the committed
/// changes and the last commit's offsets.
#[test]
fn wal_writer_and_replay_through_pulsar() {
    use millpond_state::{Change, ChangeOp, StateKind};
    use millpond_wal::{replay, OwnedChange, SourceOffset, Wal, WalSettings};

    let _serial = serial();
    let topic = unique_topic("wal-replay");
    let sink = PulsarSink::connect(settings(&topic)).expect("connect");
    // Small batches and a long linger, so that several batches queue up per message.
    let wal = Wal::start(
        sink,
        1,
        WalSettings {
            batch_bytes: 4096,
            linger_ms: 50,
            ..WalSettings::default()
        },
    );
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..5000u32 {
        let key = (i % 701).to_be_bytes();
        let value = format!("value-{i}").into_bytes();
        wal.append_change(&Change {
            state: "s",
            kind: StateKind::Value,
            key_group: 0,
            key: &key,
            op: ChangeOp::Put {
                value: &value,
                expires_at_ms: 0,
            },
        })
        .expect("append");
        expected.insert(key.to_vec(), value);
        if i % 1000 == 999 {
            let _durable = wal
                .commit(&[SourceOffset {
                    topic: "in".into(),
                    partition: 0,
                    next_offset: i as i64 + 1,
                }])
                .expect("commit");
        }
    }
    let stats = wal.stats();
    wal.close().expect("close");

    let mut source = PulsarSource::open(settings(&topic), None).expect("source");
    let mut replayed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let outcome = replay(&mut source, 0, |c: &OwnedChange| {
        if let ChangeOp::Put { value, .. } = c.as_change().op {
            replayed.insert(c.key.clone(), value.to_vec());
        }
        Ok::<(), std::io::Error>(())
    })
    .expect("replay");
    assert_eq!(replayed, expected);
    assert_eq!(outcome.applied, 5000);
    assert_eq!(outcome.next_lsn, stats.next_lsn);
    assert_eq!(
        outcome.last_commit.expect("a commit").offsets[0].next_offset,
        5000
    );
    assert!(stats.batches_written > 5, "{stats:?}");
}

/// The snapshot trigger's inputs with the Pulsar sink: the writer counts what its sink
/// accepted after an LSN and the newest durable commit, as with local segments
/// (`wal_lag.rs`).
#[test]
fn bytes_after_an_lsn_and_the_last_commit_through_pulsar() {
    use millpond_state::{Change, ChangeOp, StateKind};
    use millpond_wal::{SourceOffset, Wal, WalSettings};

    let _serial = serial();
    let topic = unique_topic("wal-lag");
    let sink = PulsarSink::connect(settings(&topic)).expect("connect");
    let wal = Wal::start(sink, 1, WalSettings::default());
    let mut marks = Vec::new();
    let mut last_change = 0;
    for i in 0..3i64 {
        last_change = wal
            .append_change(&Change {
                state: "s",
                kind: StateKind::Value,
                key_group: 0,
                key: &i.to_be_bytes(),
                op: ChangeOp::Put {
                    value: b"value",
                    expires_at_ms: 0,
                },
            })
            .expect("append");
        let offsets = [SourceOffset {
            topic: "in".into(),
            partition: 0,
            next_offset: i + 1,
        }];
        let lsn = wal.commit(&offsets).expect("commit").lsn();
        marks.push((lsn, wal.stats().bytes_written));
    }
    // Offsets only.
    let offsets = [SourceOffset {
        topic: "in".into(),
        partition: 0,
        next_offset: 10,
    }];
    let markers_only = wal.commit(&offsets).expect("commit").lsn();
    let stats = wal.stats();
    assert_eq!(stats.last_commit_lsn, markers_only);
    assert_eq!(stats.last_committed_change_lsn, last_change);
    assert_eq!(wal.bytes_after(0), stats.bytes_written);
    assert_eq!(wal.bytes_after(markers_only), 0);
    for (lsn, written) in marks {
        assert_eq!(wal.bytes_after(lsn), stats.bytes_written - written);
    }
    wal.close().expect("close");
}
