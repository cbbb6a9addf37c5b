//! Per-user sessions that expire, as with Flink's `StateTtlConfig`: a `ValueState` holds each
//! user's session (events, last page) and a `MapState` the pages they viewed, both with a
//! 30-minute TTL refreshed on create and write (`OnCreateAndWrite`, Flink's default) and never
//! returning expired data. Time comes from an injected `ManualClock`, so three hours of
//! simulated clicks run in well under a second and every run gives the same result.
//!
//! It shows that an idle user's session reads as gone exactly 30 minutes after their last
//! event, that reads do not extend it (only writes do), that a user coming back after it
//! expired starts a new session, and that TTL survives restarts: after a graceful close, and
//! after a crash, the reopened job (snapshot restored, WAL replayed, at the same clock time)
//! sees the same sessions alive and the same ones expired. Every check compares the state with
//! a plain model of the last write of every user and page.
//!
//! `cargo run --release --example ttl_sessions`

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use millpond::state::{
    BoxError, Clock, Codec, ManualClock, MapState, MapStateDescriptor, StringCodec, TtlConfig,
    TtlUpdateType, U64Codec, ValueState, ValueStateDescriptor,
};
use millpond::wal::SourceOffset;
use millpond::{Millpond, Settings};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const MINUTE_MS: u64 = 60_000;
const TTL_MS: u64 = 30 * MINUTE_MS;
/// The simulated clock starts at 2026-01-01T00:00:00Z; times are printed from there.
const T0_MS: u64 = 1_767_225_600_000;
const USERS: u64 = 2_000;
const SIM_MINUTES: u64 = 180;
const PAGES: [&str; 6] = [
    "/home",
    "/search",
    "/product",
    "/cart",
    "/checkout",
    "/help",
];

/// A user's session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    /// When the session started, in ms since the Unix epoch.
    started_ms: u64,
    events: u64,
    last_page: String,
}

/// Stores a [`Session`] as 16 bytes of numbers followed by the page.
struct SessionCodec;

impl Codec<Session> for SessionCodec {
    fn encode(&self, s: &Session, out: &mut Vec<u8>) -> std::result::Result<(), BoxError> {
        out.extend_from_slice(&s.started_ms.to_be_bytes());
        out.extend_from_slice(&s.events.to_be_bytes());
        out.extend_from_slice(s.last_page.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> std::result::Result<Session, BoxError> {
        if bytes.len() < 16 {
            return Err(format!("a session needs at least 16 bytes, found {}", bytes.len()).into());
        }
        let (numbers, page) = bytes.split_at(16);
        Ok(Session {
            started_ms: u64::from_be_bytes(numbers[..8].try_into()?),
            events: u64::from_be_bytes(numbers[8..].try_into()?),
            last_page: std::str::from_utf8(page)?.to_owned(),
        })
    }
}

fn ttl() -> TtlConfig {
    // The defaults, spelled out: writes refresh, expired data is never returned.
    TtlConfig::new(Duration::from_millis(TTL_MS)).with_update_type(TtlUpdateType::OnCreateAndWrite)
}

/// The job's states. Registering the same descriptors (names, kinds, TTL) after a restart
/// finds the same state.
struct States {
    sessions: ValueState<String, Session>,
    /// Views of each page by each user. Every map entry has its own expiry, refreshed when
    /// that page is viewed again: a page not viewed for 30 minutes drops out of the map while
    /// the session goes on.
    pages: MapState<String, String, u64>,
}

/// Opens (or reopens) the job at the clock's current time.
fn open(dir: &Path, clock: &ManualClock) -> Result<(Millpond, States)> {
    let recovering = Millpond::builder(dir)
        .settings(Settings {
            // Snapshots on request only, so that the run is the same every time.
            snapshot_after_changes: u64::MAX,
            snapshot_after_wal_bytes: u64::MAX,
            snapshot_interval_max: None,
            ..Settings::default()
        })
        .clock(clock.clone())
        .open()?;
    let store = recovering.store();
    let states = States {
        sessions: store.value_state(
            ValueStateDescriptor::new("sessions", StringCodec, SessionCodec).with_ttl(ttl()),
        )?,
        pages: store.map_state(
            MapStateDescriptor::new("session-pages", StringCodec, StringCodec, U64Codec)
                .with_ttl(ttl()),
        )?,
    };
    Ok((recovering.recover()?, states))
}

/// What the state should hold: the last write of every user and page, with what was written.
#[derive(Default)]
struct Model {
    sessions: HashMap<String, (u64, Session)>,
    pages: HashMap<(String, String), (u64, u64)>,
    /// Sessions started by a user whose earlier session had expired.
    new_sessions_after_expiry: u64,
}

impl Model {
    /// What was written at `at`, if it is still alive at `now_ms`: until `at + TTL`, exclusive.
    fn alive<T: Clone>(written: Option<&(u64, T)>, now_ms: u64) -> Option<T> {
        written
            .filter(|(at, _)| now_ms < at + TTL_MS)
            .map(|(_, v)| v.clone())
    }

    fn click(&mut self, user: &str, page: &str, now_ms: u64) {
        let session = match Model::alive(self.sessions.get(user), now_ms) {
            Some(s) => Session {
                events: s.events + 1,
                last_page: page.to_owned(),
                ..s
            },
            None => {
                if self.sessions.contains_key(user) {
                    self.new_sessions_after_expiry += 1;
                }
                Session {
                    started_ms: now_ms,
                    events: 1,
                    last_page: page.to_owned(),
                }
            }
        };
        self.sessions.insert(user.to_owned(), (now_ms, session));
        let key = (user.to_owned(), page.to_owned());
        let views = Model::alive(self.pages.get(&key), now_ms).unwrap_or(0) + 1;
        self.pages.insert(key, (now_ms, views));
    }
}

/// One click: the job's logic.
fn click(states: &States, user: &String, page: &String, now_ms: u64) -> Result<()> {
    states.sessions.update_with(user, |session| {
        Some(match session {
            Some(s) => Session {
                events: s.events + 1,
                last_page: page.clone(),
                ..s
            },
            // None: a new user, or their last session expired.
            None => Session {
                started_ms: now_ms,
                events: 1,
                last_page: page.clone(),
            },
        })
    })?;
    let views = states.pages.get(user, page)?.unwrap_or(0);
    states.pages.put(user, page, &(views + 1))?;
    Ok(())
}

fn hash(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 32)
}

/// The clicks of minute `m`, as (second, user, page), in time order. User `i` is active in a
/// window of 10 to 99 minutes from a start in the first two hours, clicking every 1 to 15
/// minutes; a third of the users come back 31 to 60 minutes after their window ends, for a
/// second visit of 5 to 19 minutes.
fn clicks(m: u64) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for i in 0..USERS {
        let start = hash(i, 1) % 120;
        let end = start + 10 + hash(i, 2) % 90;
        let every = 1 + hash(i, 3) % 15;
        let back = end + 31 + hash(i, 4) % 30;
        let back_end = back + 5 + hash(i, 5) % 15;
        let active =
            (start..end).contains(&m) || (i.is_multiple_of(3) && (back..back_end).contains(&m));
        if active && (m - start).is_multiple_of(every) {
            let page = PAGES[(hash(i, m) % PAGES.len() as u64) as usize];
            out.push((hash(m, i) % 60, format!("u{i:04}"), page.to_owned()));
        }
    }
    out.sort();
    out
}

/// Every user: the simulated ones and ada.
fn users() -> impl Iterator<Item = String> {
    (0..USERS)
        .map(|i| format!("u{i:04}"))
        .chain(["ada".to_string()])
}

/// Compares every user's session and pages with the model at the clock's time. Returns the
/// live sessions.
fn check(states: &States, model: &Model, clock: &ManualClock) -> Result<Vec<(String, Session)>> {
    let now = clock.now_ms();
    let mut alive = Vec::new();
    let mut expected_pages: HashMap<&str, BTreeMap<String, u64>> = HashMap::new();
    for ((user, page), written) in &model.pages {
        if let Some(views) = Model::alive(Some(written), now) {
            expected_pages
                .entry(user)
                .or_default()
                .insert(page.clone(), views);
        }
    }
    for user in users() {
        // Reads: with OnCreateAndWrite they do not refresh the TTL.
        let got = states.sessions.get(&user)?;
        let expected = Model::alive(model.sessions.get(&user), now);
        if got != expected {
            return Err(format!(
                "at {}: session of {user} is {got:?}, the model says {expected:?}",
                time(now)
            )
            .into());
        }
        let got_pages: BTreeMap<String, u64> = states.pages.entries(&user)?.into_iter().collect();
        let expected_pages = expected_pages.remove(user.as_str()).unwrap_or_default();
        if got_pages != expected_pages {
            return Err(format!(
                "at {}: pages of {user} are {got_pages:?}, the model says {expected_pages:?}",
                time(now)
            )
            .into());
        }
        if let Some(session) = got {
            alive.push((user, session));
        }
    }
    Ok(alive)
}

/// `hh:mm:ss` since the start of the simulation.
fn time(ms: u64) -> String {
    let s = (ms - T0_MS) / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn main() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(T0_MS);
    println!(
        "sessions of {} users over {} h of simulated clicks; TTL {} min, refreshed on write",
        USERS + 1,
        SIM_MINUTES / 60,
        TTL_MS / MINUTE_MS
    );
    let (mut job, mut states) = open(dir.path(), &clock)?;
    let mut model = Model::default();
    let mut offset = 0i64;

    // One user clicks once, then is only read: reads do not keep a session alive.
    let ada = "ada".to_string();
    click(&states, &ada, &"/home".to_string(), clock.now_ms())?;
    model.click(&ada, "/home", clock.now_ms());

    for m in 0..SIM_MINUTES {
        if m == 30 {
            clock.set_ms(T0_MS + TTL_MS - 1);
            let before = states.sessions.get(&ada)?;
            clock.set_ms(T0_MS + TTL_MS);
            let after = states.sessions.get(&ada)?;
            println!(
                "{}  ada clicked once at 00:00:00 and was read at 00:10 and 00:20: \
                 at 00:29:59.999 her session is {}, at 00:30:00.000 {}",
                time(clock.now_ms()),
                if before.is_some() { "alive" } else { "gone" },
                if after.is_some() { "alive" } else { "gone" },
            );
            if before.is_none() || after.is_some() {
                return Err("ada's session did not expire 30 minutes after her click".into());
            }
        }
        clock.set_ms(T0_MS + m * MINUTE_MS);
        if m == 10 || m == 20 {
            states.sessions.get(&ada)?;
        }
        for (second, user, page) in clicks(m) {
            let now = T0_MS + m * MINUTE_MS + second * 1000;
            clock.set_ms(now);
            click(&states, &user, &page, now)?;
            model.click(&user, &page, now);
            offset += 1;
        }
        let _durable = job.commit(&[SourceOffset {
            topic: "clicks".into(),
            partition: 0,
            next_offset: offset,
        }])?;

        if m == 60 {
            let snapshot = job.snapshot_now()?;
            println!(
                "{}  snapshot written ({} changes)",
                time(clock.now_ms()),
                snapshot.map_or(0, |s| s.changes)
            );
        } else if m == 90 || m == 150 {
            let alive = check(&states, &model, &clock)?;
            let crash = m == 150;
            let how = if crash {
                // A click after the last commit: the crash loses it (the model never had it).
                click(&states, &ada, &"/lost".to_string(), clock.now_ms())?;
                drop(job);
                "crashed"
            } else {
                job.close()?;
                "closed"
            };
            drop(states);
            (job, states) = open(dir.path(), &clock)?;
            let r = job.recovery();
            let after = check(&states, &model, &clock)?;
            println!(
                "{}  {} live sessions; {how}, reopened at the same time (snapshot restored, \
                 {} changes replayed, {} discarded): the same {} live sessions",
                time(clock.now_ms()),
                alive.len(),
                r.replayed,
                r.discarded,
                after.len()
            );
            if after != alive {
                return Err("the live sessions differ after the restart".into());
            }
            if job.resume_offset("clicks", 0) != Some(offset) {
                return Err("the job does not resume after its last committed click".into());
            }
        } else if m.is_multiple_of(30) {
            let alive = check(&states, &model, &clock)?;
            println!("{}  {} live sessions", time(clock.now_ms()), alive.len());
        }
    }

    let alive = check(&states, &model, &clock)?;
    let oldest = alive
        .iter()
        .map(|(_, s)| s.started_ms)
        .min()
        .unwrap_or(clock.now_ms());
    println!(
        "{}  clicks stop: {} live sessions; the oldest started at {}, kept alive {} min by \
         its writes",
        time(clock.now_ms()),
        alive.len(),
        time(oldest),
        (clock.now_ms() - oldest) / MINUTE_MS
    );
    clock.advance_ms(TTL_MS);
    // Expired entries are removed when read, in the background, or on demand, as here.
    let removed = job.store().cleanup_expired(usize::MAX)?;
    let alive = check(&states, &model, &clock)?;
    println!(
        "{}  30 min later: {} live sessions; cleanup removed {removed} expired entries",
        time(clock.now_ms()),
        alive.len()
    );
    if !alive.is_empty() {
        return Err(format!("{} sessions outlived their TTL", alive.len()).into());
    }
    job.close()?;
    println!(
        "every check matched the model: {offset} clicks, {} sessions that started again after \
         expiring; {:.2?}",
        model.new_sessions_after_expiry,
        started.elapsed()
    );
    Ok(())
}
