//! The Apache Pulsar sink: [`PulsarSink`] writes each WAL batch as one Pulsar message,
//! [`PulsarSource`] reads them back for replay.
//!
//! Built on pulsar-rs 6.x (`pulsar` crate, tokio runtime). Both types own a small tokio runtime
//! of their own ([`OwnRuntime`]) and block the calling thread, so
//! the flusher (a plain thread) can call them directly; calling or dropping them inside another
//! async runtime does not panic, but blocks that thread.
//!
//! # Topics
//!
//! One non-partitioned persistent topic per state owner (job × instance), named
//! `persistent://{tenant}/{namespace}/millpond-wal-{job}-{instance}`: see [`wal_topic`]. The
//! topic is created on first use when the broker allows auto-creation; otherwise create it
//! (non-partitioned) beforehand.
//!
//! # Retention
//!
//! Pulsar deletes a ledger of messages once every durable subscription has acknowledged it and
//! the namespace's retention (size and time) has passed. The default retention is 0, and a
//! topic without durable subscriptions counts as fully acknowledged: its messages vanish at the
//! next ledger rollover (a broker restart, a topic unload or move, a full ledger). So by
//! default the sink keeps a durable subscription, [`PulsarSettings::retention_subscription`]
//! (`millpond-wal-retain`), created at the earliest message when the sink first connects and
//! never read from: it pins every batch until [`WalSink::truncate_below`] acknowledges the
//! batches a snapshot covers. Without it (`None`), the namespace or topic retention policy
//! alone decides what is kept, and `truncate_below` does nothing.
//!
//! # Guarantees and limits
//!
//! - `append` returns only after the broker acknowledged the message (persisted on the
//!   bookies' ack quorum), and sends one batch at a time, so acknowledged batches are in LSN
//!   order in the topic.
//! - A send whose receipt was lost is sent again (by pulsar-rs after a reconnection, or by
//!   `append` after a failed attempt): the topic may hold the same batch twice, always before
//!   the next batch. Replay drops duplicates by LSN.
//! - The producer uses Pulsar's `Exclusive` access mode: while one `PulsarSink` is connected,
//!   another one on the same topic fails with [`Error::Fenced`]. pulsar-rs 6.x does not send
//!   the topic epoch when it re-creates a producer after a disconnection, so exclusivity is
//!   "first come" at each (re)connection: a zombie writer that reconnects while the topic has
//!   no connected producer can get it back. Exclusivity stops two writers from interleaving
//!   while both are connected; it is not an epoch-based fence.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::runtime::OwnRuntime;
use futures::StreamExt;
use pulsar::consumer::InitialPosition;
use pulsar::error::{ConnectionError, ConsumerError, ProducerError, ServiceDiscoveryError};
use pulsar::proto::{MessageIdData, ProducerAccessMode, ServerError};
use pulsar::reader::Reader;
use pulsar::{
    Authentication, ConnectionRetryOptions, Consumer, ConsumerOptions, OperationRetryOptions,
    Producer, ProducerOptions, Pulsar, SubType, TokioExecutor,
};

use crate::error::{Error, Result};
use crate::sink::{Batch, StoredBatch, WalPosition, WalSink, WalSource};

/// Largest payload of one message when batches are sent together (Pulsar's default
/// `maxMessageSize` is 5 MiB, metadata included).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Appended batches a sink remembers for `truncate_below` (see `SinkInner::remember`).
const MAX_REMEMBERED: usize = 8192;

/// Message property holding the batch's first LSN (decimal), for operators inspecting a topic.
/// pulsar-rs 6.x assigns the message's `sequence_id` itself (per producer, from 0), so the LSN
/// cannot go there.
pub const PROPERTY_FIRST_LSN: &str = "millpond.first_lsn";
/// Message property holding the batch's last LSN (decimal).
pub const PROPERTY_LAST_LSN: &str = "millpond.last_lsn";

/// The WAL topic of one state owner:
/// `persistent://{tenant}/{namespace}/millpond-wal-{job}-{instance}`.
///
/// One non-partitioned persistent topic per state owner, written by exactly one live
/// [`PulsarSink`] at a time.
pub fn wal_topic(tenant: &str, namespace: &str, job: &str, instance: &str) -> String {
    format!("persistent://{tenant}/{namespace}/millpond-wal-{job}-{instance}")
}

/// How Pulsar compresses each message (the WAL batch bytes are sent uncompressed by us; the
/// producer compresses, the reader decompresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PulsarCompression {
    /// No compression.
    None,
    /// LZ4 (the default): cheap, and WAL records compress well.
    #[default]
    Lz4,
    /// Zstandard at its default level: smaller, more CPU.
    Zstd,
}

/// Settings of [`PulsarSink`] and [`PulsarSource`]. Plain data; `Default` gives the defaults
/// documented on each field, except `topic`, which must be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulsarSettings {
    /// Broker service URL, `pulsar://host:port` or `pulsar+ssl://host:port`.
    /// Default: `pulsar://127.0.0.1:6650`.
    pub service_url: String,
    /// The WAL topic, a full `persistent://tenant/namespace/name`: see [`wal_topic`] for the
    /// naming convention. Required (default empty, which `connect`/`open` refuse).
    pub topic: String,
    /// Producer name shown by the broker. Default `None`: derived from the topic's local name,
    /// the process id and the time (`{name}-{pid}-{nanos:x}`), unique per connection.
    pub producer_name: Option<String>,
    /// Message compression. Default [`PulsarCompression::Lz4`].
    pub compression: PulsarCompression,
    /// Time limit of one Pulsar operation (connecting a producer or reader, one send until its
    /// receipt, a lookup). A send not acknowledged within it fails that attempt. Default 30 s.
    pub operation_timeout: Duration,
    /// How many times one `append` (or a connection, or a read) is retried after a failed
    /// attempt before giving up with [`Error::Unavailable`]. Also bounds pulsar-rs's own
    /// connection and operation retries. Default 10.
    pub max_retries: u32,
    /// First delay between retries, doubled after each failed attempt. Default 100 ms.
    pub min_backoff: Duration,
    /// Largest delay between retries. Default 5 s.
    pub max_backoff: Duration,
    /// Token authentication (a JWT); `None` for none. Default `None`.
    pub auth_token: Option<String>,
    /// For `pulsar+ssl://`: PEM file of the certificate chain that signs the broker's
    /// certificate, if not in the system's trust store. Default `None`.
    pub tls_trust_cert_file: Option<PathBuf>,
    /// For `pulsar+ssl://`: accept any broker certificate and host name. For tests only.
    /// Default `false`.
    pub tls_allow_insecure: bool,
    /// Messages the reader asks the broker for ahead of time (flow permits and receive queue).
    /// Each is a whole WAL batch, so this bounds replay memory. Default 64.
    pub reader_prefetch: u32,
    /// Durable subscription that keeps the batches until [`WalSink::truncate_below`]
    /// acknowledges them (see the module docs, "Retention"). The sink creates it at the
    /// earliest message and never receives on it. `None`: no subscription; the namespace's
    /// retention policy must then keep the log. Default `Some("millpond-wal-retain")`.
    pub retention_subscription: Option<String>,
    /// Take the topic over from a producer that still holds it: the sink's first producer is
    /// created with Pulsar's `ExclusiveWithFencing` access mode, so the broker fences the
    /// previous owner (its sends fail from then on) instead of refusing this sink. It is then
    /// closed at once and replaced by an `Exclusive` producer, as is every producer the sink
    /// re-creates later: pulsar-rs re-creates a disconnected producer with its original access
    /// mode, so a fencing producer kept open would take the topic back from a newer owner
    /// after a network blip. Use it with a fencing token that orders owners (the
    /// writer epoch, see `Wal::start_with_epoch`). Default `false`: `connect` fails with
    /// [`Error::Fenced`] while another producer is connected.
    pub take_over: bool,
}

impl Default for PulsarSettings {
    fn default() -> Self {
        PulsarSettings {
            service_url: "pulsar://127.0.0.1:6650".into(),
            topic: String::new(),
            producer_name: None,
            compression: PulsarCompression::Lz4,
            operation_timeout: Duration::from_secs(30),
            max_retries: 10,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            auth_token: None,
            tls_trust_cert_file: None,
            tls_allow_insecure: false,
            reader_prefetch: 64,
            retention_subscription: Some("millpond-wal-retain".into()),
            take_over: false,
        }
    }
}

impl PulsarSettings {
    /// Settings for `topic` with every other field at its default.
    pub fn for_topic(service_url: impl Into<String>, topic: impl Into<String>) -> Self {
        PulsarSettings {
            service_url: service_url.into(),
            topic: topic.into(),
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::Invalid { reason });
        if !(self.service_url.starts_with("pulsar://")
            || self.service_url.starts_with("pulsar+ssl://"))
        {
            return invalid(format!(
                "Pulsar service URL {:?} must start with pulsar:// or pulsar+ssl://",
                self.service_url
            ));
        }
        // A short name would resolve to persistent://public/default/NAME, and a
        // non-persistent topic would lose the log: ask for the full name.
        let Some(rest) = self.topic.strip_prefix("persistent://") else {
            return invalid(format!(
                "Pulsar WAL topic {:?} must be a full persistent://tenant/namespace/name",
                self.topic
            ));
        };
        if rest.split('/').count() != 3 || rest.split('/').any(str::is_empty) {
            return invalid(format!(
                "Pulsar WAL topic {:?} must be persistent://tenant/namespace/name",
                self.topic
            ));
        }
        if self.operation_timeout.is_zero() {
            return invalid("Pulsar operation_timeout must be positive".into());
        }
        if self.min_backoff > self.max_backoff {
            return invalid("Pulsar min_backoff must not exceed max_backoff".into());
        }
        Ok(())
    }

    /// The backoff before retry number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.min_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Our own limit on one awaited pulsar-rs call: pulsar-rs applies `operation_timeout`
    /// itself; this only guards against a call that never returns.
    fn guard_timeout(&self) -> Duration {
        self.operation_timeout + Duration::from_secs(5)
    }

    fn derived_producer_name(&self) -> String {
        let local = self.topic.rsplit('/').next().unwrap_or("wal");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{local}-{}-{nanos:x}", std::process::id())
    }
}

/// The runtime both sink and source run pulsar-rs on: one worker thread, so that pulsar-rs's
/// background tasks (keep-alives, receipts, reconnections) progress between calls.
fn runtime(name: &str) -> Result<OwnRuntime> {
    OwnRuntime::multi_thread(name, 1).map_err(|e| Error::Unavailable {
        reason: format!("could not start the Pulsar client runtime: {e}"),
    })
}

async fn build_client(settings: &PulsarSettings) -> Result<Pulsar<TokioExecutor>> {
    let mut builder = Pulsar::builder(settings.service_url.clone(), TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: settings.min_backoff,
            max_backoff: settings.max_backoff,
            max_retries: settings.max_retries,
            connection_timeout: settings.operation_timeout.min(Duration::from_secs(10)),
            ..Default::default()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: settings.operation_timeout,
            // after ServiceNotReady (a broker still loading the topic) or ProducerBusy
            retry_delay: settings.min_backoff.max(Duration::from_millis(500)),
            max_retries: Some(settings.max_retries),
        });
    if let Some(token) = &settings.auth_token {
        builder = builder.with_auth(Authentication {
            name: "token".into(),
            data: token.clone().into_bytes(),
        });
    }
    if let Some(path) = &settings.tls_trust_cert_file {
        builder = builder
            .with_certificate_chain_file(path)
            .map_err(|e| Error::Invalid {
                reason: format!("Pulsar TLS trust certificate {}: {e}", path.display()),
            })?;
    }
    if settings.tls_allow_insecure {
        builder = builder
            .with_allow_insecure_connection(true)
            .with_tls_hostname_verification_enabled(false);
    }
    builder.build().await.map_err(|e| classify(&e).into_error())
}

/// What to do after a pulsar-rs error.
enum Failure {
    /// Another producer holds the topic.
    Fenced(String),
    /// Configuration (URL, credentials, topic): retrying cannot help.
    Invalid(String),
    /// The topic cannot take writes any more (terminated, deleted): do not retry.
    Final(String),
    /// Try again; `rebuild` when the producer object itself is dead.
    Retry { reason: String, rebuild: bool },
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Fenced(reason) => Error::Fenced { reason },
            Failure::Invalid(reason) => Error::Invalid { reason },
            Failure::Final(reason) | Failure::Retry { reason, .. } => Error::Unavailable { reason },
        }
    }

    fn timed_out(what: &str, limit: Duration) -> Failure {
        Failure::Retry {
            reason: format!("{what} did not finish within {limit:?}"),
            rebuild: true,
        }
    }
}

fn server_error(e: &pulsar::Error) -> Option<ServerError> {
    use pulsar::Error as E;
    let connection = match e {
        E::Connection(c) => c,
        E::Producer(ProducerError::Connection(c)) => c,
        E::Consumer(ConsumerError::Connection(c)) => c,
        E::ServiceDiscovery(ServiceDiscoveryError::Connection(c)) => c,
        E::ServiceDiscovery(ServiceDiscoveryError::Query(kind, _)) => return *kind,
        _ => return None,
    };
    match connection {
        ConnectionError::PulsarError(kind, _) => *kind,
        _ => None,
    }
}

/// Sorts a pulsar-rs error into what the WAL does with it.
fn classify(e: &pulsar::Error) -> Failure {
    use pulsar::Error as E;
    let text = e.to_string();
    match server_error(e) {
        // Exclusive access mode: "Topic has an existing exclusive producer". ProducerBusy is a
        // live producer with the same name (pulsar-rs already retried it).
        Some(ServerError::ProducerFenced | ServerError::ProducerBusy) => {
            return Failure::Fenced(text)
        }
        Some(
            ServerError::AuthenticationError
            | ServerError::AuthorizationError
            | ServerError::InvalidTopicName
            | ServerError::NotAllowedError
            | ServerError::IncompatibleSchema,
        ) => return Failure::Invalid(text),
        Some(ServerError::TopicTerminatedError | ServerError::TopicNotFound) => {
            return Failure::Final(text)
        }
        _ => {}
    }
    // pulsar-rs reports a permanent failure to re-create the producer inside a
    // ProducerError::Custom message ("could not re-create the producer: Server error
    // (Some(ProducerFenced)) ...").
    if matches!(e, E::Producer(ProducerError::Fenced)) || text.contains("ProducerFenced") {
        return Failure::Fenced(text);
    }
    match e {
        E::Authentication(_)
        | E::Connection(ConnectionError::Authentication(_) | ConnectionError::NotFound)
        | E::Connection(ConnectionError::Tls(_)) => Failure::Invalid(text),
        _ => {
            let rebuild = matches!(e, E::Producer(ProducerError::Closed) | E::Executor)
                || text.contains("unexpectedly disconnected")
                || text.contains("could not re-create the producer");
            Failure::Retry {
                reason: text,
                rebuild,
            }
        }
    }
}

async fn guarded<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, pulsar::Error>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(Failure::timed_out(what, limit)),
    }
}

fn position(id: &MessageIdData) -> WalPosition {
    WalPosition::Pulsar {
        ledger_id: id.ledger_id,
        entry_id: id.entry_id,
        partition: id.partition.unwrap_or(-1),
        batch_index: id.batch_index.unwrap_or(-1),
    }
}

/// `(ledger, entry)` as the broker means them: `u64::MAX` on the wire is -1.
fn id_key(id: &MessageIdData) -> (i64, i64) {
    (id.ledger_id as i64, id.entry_id as i64)
}

// ---------------------------------------------------------------------------------- sink

/// A [`WalSink`] writing each batch as one message on a Pulsar topic.
///
/// - One message per batch, its payload exactly `batch.bytes`; pulsar-rs's own batching is off
///   (the WAL batches already). The batch's LSNs are also in the message properties
///   [`PROPERTY_FIRST_LSN`] and [`PROPERTY_LAST_LSN`].
/// - `append` waits for the broker's receipt and returns the message id as
///   [`WalPosition::Pulsar`].
/// - The producer is `Exclusive`: [`PulsarSink::connect`] fails with [`Error::Fenced`] while
///   another sink is connected to the topic, and so does `append` if the broker gives the
///   topic to another producer while this one was disconnected. Once fenced, every later
///   `append` fails with `Fenced` at once.
/// - Broker restarts and dropped connections: pulsar-rs reconnects and resends the pending
///   message; `append` keeps trying (re-creating a dead producer object) for
///   `max_retries` attempts with exponential backoff, each bounded by `operation_timeout`,
///   then fails with [`Error::Unavailable`].
/// - Dropping the sink closes the producer (waiting at most a few seconds), which frees the
///   topic for the next writer at once.
pub struct PulsarSink {
    runtime: OwnRuntime,
    inner: SinkInner,
}

struct SinkInner {
    settings: PulsarSettings,
    client: Option<Pulsar<TokioExecutor>>,
    producer: Option<Producer<TokioExecutor>>,
    /// Producers created so far (the first may take the topic over).
    producers_created: u64,
    /// Set once the broker fenced this writer: sticky.
    fenced: Option<String>,
    /// `(last LSN, message id)` of the batches appended by this sink and not yet truncated.
    appended: VecDeque<(u64, MessageIdData)>,
    /// The message to acknowledge (cumulatively) on the retention subscription, if the last
    /// try failed.
    truncate_to: Option<MessageIdData>,
}

impl std::fmt::Debug for PulsarSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarSink")
            .field("topic", &self.inner.settings.topic)
            .field("connected", &self.inner.producer.is_some())
            .field("fenced", &self.inner.fenced)
            .finish()
    }
}

impl PulsarSink {
    /// Connects to the broker and creates the exclusive producer on `settings.topic`.
    ///
    /// Errors: [`Error::Invalid`] for bad settings or credentials, [`Error::Fenced`] if another
    /// producer holds the topic, [`Error::Unavailable`] if the broker cannot be reached within
    /// the retry policy.
    pub fn connect(settings: PulsarSettings) -> Result<Self> {
        settings.validate()?;
        let runtime = runtime("millpond-wal-pulsar")?;
        let mut inner = SinkInner {
            settings,
            client: None,
            producer: None,
            producers_created: 0,
            fenced: None,
            appended: VecDeque::new(),
            truncate_to: None,
        };
        runtime.block_on(inner.connect_with_retries())?;
        Ok(PulsarSink { runtime, inner })
    }

    /// The settings this sink was connected with.
    pub fn settings(&self) -> &PulsarSettings {
        &self.inner.settings
    }
}

impl SinkInner {
    async fn connect_with_retries(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            let connected = match self.ensure_producer().await {
                // Only the owner creates the retention subscription, and before any append.
                Ok(()) => self.retention_subscription(None).await,
                Err(f) => Err(f),
            };
            match connected {
                Ok(()) => return Ok(()),
                Err(f) => self.after_failure(f, &mut attempt, "connecting").await?,
            }
        }
    }

    /// Subscribes to the retention subscription (creating it at the earliest message if it
    /// does not exist), acknowledges everything up to `ack` if given, and leaves.
    async fn retention_subscription(
        &mut self,
        ack: Option<MessageIdData>,
    ) -> std::result::Result<(), Failure> {
        let Some(subscription) = self.settings.retention_subscription.clone() else {
            return Ok(());
        };
        let limit = self.settings.guard_timeout();
        let client = self.client.as_ref().expect("connected before");
        let topic = self.settings.topic.clone();
        let mut consumer: Consumer<Vec<u8>, TokioExecutor> = guarded(
            limit,
            "subscribing the retention subscription",
            client
                .consumer()
                .with_topic(topic.clone())
                .with_subscription(subscription)
                // Failover rather than Exclusive: a zombie's short visit must not make ours
                // fail with ConsumerBusy.
                .with_subscription_type(SubType::Failover)
                .with_consumer_name(self.settings.derived_producer_name())
                // One flow permit at a time (the broker refuses 0 and closes the connection):
                // the few messages dispatched before the acknowledgement fit in the receive
                // queue (1000), so the consumer engine never blocks before processing it.
                .with_batch_size(1)
                .with_options(
                    ConsumerOptions::default()
                        .durable(true)
                        .with_initial_position(InitialPosition::Earliest),
                )
                .build(),
        )
        .await?;
        let acked = match ack {
            Some(id) => {
                guarded(
                    limit,
                    "acknowledging on the retention subscription",
                    async {
                        consumer
                            .cumulative_ack_with_id(&topic, id)
                            .await
                            .map_err(pulsar::Error::Consumer)
                    },
                )
                .await
            }
            None => Ok(()),
        };
        // Queued after the acknowledgement on the same connection.
        let _ = tokio::time::timeout(limit, consumer.close()).await;
        acked
    }

    /// Remembers where a batch went, for `truncate_below`. Bounded: when full, every other
    /// entry is forgotten (the newest kept), so a truncation may acknowledge a slightly earlier
    /// batch than it could: the log is kept a little longer, never shorter.
    fn remember(&mut self, last_lsn: u64, id: MessageIdData) {
        self.appended.push_back((last_lsn, id));
        if self.appended.len() > MAX_REMEMBERED {
            let len = self.appended.len();
            let mut index = 0;
            self.appended.retain(|_| {
                index += 1;
                (len - index).is_multiple_of(2)
            });
        }
    }

    /// Cumulatively acknowledges, on the retention subscription, the last batch appended by
    /// this sink that lies wholly below `lsn`.
    async fn truncate_below(&mut self, lsn: u64) {
        if self.settings.retention_subscription.is_none() || self.fenced.is_some() {
            return;
        }
        while self.appended.front().is_some_and(|(last, _)| *last < lsn) {
            let (_, id) = self.appended.pop_front().expect("front exists");
            self.truncate_to = Some(id);
        }
        let Some(id) = self.truncate_to.clone() else {
            return;
        };
        if self.ensure_producer().await.is_err() {
            return; // not connected now: next time
        }
        if self.retention_subscription(Some(id)).await.is_ok() {
            self.truncate_to = None;
        }
    }

    /// Decides, after a failed attempt, between an error and another try (after its backoff).
    async fn after_failure(&mut self, f: Failure, attempt: &mut u32, what: &str) -> Result<()> {
        match f {
            Failure::Fenced(reason) => {
                self.fenced = Some(reason.clone());
                self.discard_producer().await;
                Err(Error::Fenced { reason })
            }
            Failure::Invalid(reason) => Err(Error::Invalid {
                reason: format!("Pulsar topic {}: {reason}", self.settings.topic),
            }),
            Failure::Final(reason) => Err(Error::Unavailable {
                reason: format!("Pulsar topic {}: {reason}", self.settings.topic),
            }),
            Failure::Retry { reason, rebuild } => {
                if rebuild {
                    self.discard_producer().await;
                }
                if *attempt >= self.settings.max_retries {
                    self.discard_producer().await;
                    return Err(Error::Unavailable {
                        reason: format!(
                            "Pulsar topic {}: {what} failed {} times, last: {reason}",
                            self.settings.topic,
                            *attempt + 1
                        ),
                    });
                }
                *attempt += 1;
                tokio::time::sleep(self.settings.backoff(*attempt)).await;
                Ok(())
            }
        }
    }

    async fn ensure_producer(&mut self) -> std::result::Result<(), Failure> {
        if self.producer.is_some() {
            return Ok(());
        }
        self.create_producer().await?;
        if self.settings.take_over && self.producers_created == 1 {
            // The fencing producer has taken the topic. pulsar-rs would re-create it with the
            // same access mode after any disconnection, and so take the topic back from a
            // newer owner one day: hand over to an `Exclusive` producer at once.
            self.discard_producer().await;
            self.create_producer().await?;
        }
        Ok(())
    }

    async fn create_producer(&mut self) -> std::result::Result<(), Failure> {
        let limit = self.settings.guard_timeout();
        if self.client.is_none() {
            let client = match tokio::time::timeout(limit, build_client(&self.settings)).await {
                Ok(Ok(c)) => c,
                Ok(Err(Error::Invalid { reason })) => return Err(Failure::Invalid(reason)),
                Ok(Err(e)) => {
                    return Err(Failure::Retry {
                        reason: e.to_string(),
                        rebuild: false,
                    })
                }
                Err(_) => return Err(Failure::timed_out("connecting the Pulsar client", limit)),
            };
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("client just set");
        let compression = match self.settings.compression {
            PulsarCompression::None => pulsar::compression::Compression::None,
            PulsarCompression::Lz4 => pulsar::compression::Compression::Lz4(Default::default()),
            PulsarCompression::Zstd => pulsar::compression::Compression::Zstd(Default::default()),
        };
        let options = ProducerOptions {
            // No client-side batching: one message per WAL batch (batch_size None and no byte
            // size or timeout is what pulsar-rs checks).
            batch_size: None,
            batch_byte_size: None,
            batch_timeout: None,
            compression: Some(compression),
            access_mode: Some(if self.settings.take_over && self.producers_created == 0 {
                ProducerAccessMode::ExclusiveWithFencing as i32
            } else {
                ProducerAccessMode::Exclusive as i32
            }),
            // wait for room in pulsar-rs's outbound queue rather than fail with SlowDown
            block_queue_if_full: true,
            ..Default::default()
        };
        let name = self
            .settings
            .producer_name
            .clone()
            .unwrap_or_else(|| self.settings.derived_producer_name());
        let producer = guarded(
            limit,
            "creating the producer",
            client
                .producer()
                .with_topic(self.settings.topic.clone())
                .with_name(name)
                .with_options(options)
                .build(),
        )
        .await?;
        if producer.partitions().is_some() {
            return Err(Failure::Invalid(format!(
                "topic {} is partitioned; the WAL needs a non-partitioned topic",
                self.settings.topic
            )));
        }
        self.producer = Some(producer);
        self.producers_created += 1;
        Ok(())
    }

    /// Closes the producer (bounded) so that the broker forgets it before a new one is
    /// created: an exclusive topic would otherwise refuse our own new producer.
    async fn discard_producer(&mut self) {
        if let Some(mut producer) = self.producer.take() {
            let limit = self.settings.operation_timeout.min(Duration::from_secs(5));
            let _ = tokio::time::timeout(limit, producer.close()).await;
        }
    }

    async fn try_append(
        &mut self,
        batch: &Batch<'_>,
    ) -> std::result::Result<MessageIdData, Failure> {
        self.ensure_producer().await?;
        let limit = self.settings.guard_timeout();
        let producer = self.producer.as_mut().expect("producer just ensured");
        let message = pulsar::producer::Message {
            payload: batch.bytes.to_vec(),
            properties: HashMap::from([
                (PROPERTY_FIRST_LSN.to_string(), batch.first_lsn.to_string()),
                (PROPERTY_LAST_LSN.to_string(), batch.last_lsn.to_string()),
            ]),
            ..Default::default()
        };
        let receipt_future = guarded(limit, "sending", producer.send_non_blocking(message)).await?;
        let receipt = guarded(limit, "waiting for the receipt", receipt_future).await?;
        match receipt.message_id {
            Some(id) => Ok(id),
            // Persisted, but we do not know where: send again (a duplicate is fine).
            None => Err(Failure::Retry {
                reason: "the broker's receipt had no message id".into(),
                rebuild: false,
            }),
        }
    }

    async fn append(&mut self, batch: Batch<'_>) -> Result<WalPosition> {
        if let Some(reason) = &self.fenced {
            return Err(Error::Fenced {
                reason: reason.clone(),
            });
        }
        let mut attempt = 0;
        loop {
            match self.try_append(&batch).await {
                Ok(id) => {
                    let at = position(&id);
                    if self.settings.retention_subscription.is_some() {
                        self.remember(batch.last_lsn, id);
                    }
                    return Ok(at);
                }
                Err(f) => {
                    let what = format!("appending LSN {}..={}", batch.first_lsn, batch.last_lsn);
                    self.after_failure(f, &mut attempt, &what).await?
                }
            }
        }
    }
}

impl WalSink for PulsarSink {
    fn append(&mut self, batch: Batch<'_>) -> Result<WalPosition> {
        self.runtime.block_on(self.inner.append(batch))
    }

    /// Sends consecutive batches together, as few messages of at most [`MAX_MESSAGE_BYTES`]
    /// as they fit in (one batch larger than that goes alone): one broker round trip for all
    /// that queued up while the previous message was on its way, instead of one per batch.
    /// Every batch of a message gets the message's position.
    fn append_all(&mut self, batches: &[Batch<'_>]) -> Result<Vec<WalPosition>> {
        let mut positions = Vec::with_capacity(batches.len());
        let mut start = 0;
        while start < batches.len() {
            let mut end = start + 1;
            let mut bytes = batches[start].bytes.len();
            while end < batches.len() && bytes + batches[end].bytes.len() <= MAX_MESSAGE_BYTES {
                bytes += batches[end].bytes.len();
                end += 1;
            }
            let group = &batches[start..end];
            let position = if group.len() == 1 {
                self.append(group[0])?
            } else {
                let payload: Vec<u8> = group.iter().flat_map(|b| b.bytes.iter().copied()).collect();
                self.append(Batch {
                    first_lsn: group[0].first_lsn,
                    last_lsn: group[group.len() - 1].last_lsn,
                    bytes: &payload,
                })?
            };
            positions.extend(std::iter::repeat_n(position, group.len()));
            start = end;
        }
        Ok(positions)
    }

    /// Lets Pulsar delete the batches wholly below `lsn`: acknowledges (cumulatively), on the
    /// retention subscription, the last batch this sink appended below `lsn`; Pulsar deletes a
    /// ledger once it is acknowledged and the namespace's retention has passed. Batches of
    /// earlier writers go with it (a cumulative acknowledgement covers everything before).
    /// Best effort, never an error: when the acknowledgement cannot be sent now, the next call
    /// tries again (the log is only kept longer). Without a retention subscription, a no-op:
    /// the namespace's retention policy alone trims the topic.
    fn truncate_below(&mut self, lsn: u64) -> Result<()> {
        self.runtime.block_on(self.inner.truncate_below(lsn));
        Ok(())
    }
}

impl Drop for PulsarSink {
    fn drop(&mut self) {
        let inner = &mut self.inner;
        self.runtime.block_on(async {
            inner.discard_producer().await;
            // pulsar-rs spawns tasks when its objects drop: drop them inside the runtime
            inner.client.take();
        });
    }
}

// ---------------------------------------------------------------------------------- source

/// The framed batches of one message's payload, each with the message's position. A payload
/// that does not split cleanly is returned whole, for replay to report as corrupt.
fn split_batches(at: WalPosition, payload: Vec<u8>) -> Vec<StoredBatch> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        match crate::batch::decode(&payload[off..], String::new) {
            Ok(crate::batch::Decoded::Batch(h, _)) => {
                out.push(StoredBatch {
                    position: at.clone(),
                    bytes: payload[off..off + h.framed_len()].to_vec(),
                });
                off += h.framed_len();
            }
            _ => {
                return vec![StoredBatch {
                    position: at,
                    bytes: payload,
                }]
            }
        }
    }
    out
}

/// A [`WalSource`] reading a WAL topic in order with a non-durable Pulsar reader
/// ([`pulsar::reader::Reader`]): it creates no durable subscription, and leaves no state on the
/// broker once dropped.
///
/// Starts at the earliest message, or at a given [`WalPosition::Pulsar`] (inclusive). Returns
/// each message's payload as is (duplicates included: the replay verifies and dedups by LSN).
///
/// End of topic: when it does not know of a message after the last one returned, the source
/// asks the broker for the topic's last message id (`Reader::get_last_message_id`, the
/// protocol's `GetLastMessageId`, as Java's `Reader::hasMessageAvailable` does). If the last
/// message returned (or, before any, the start position) is already at or past it, or the
/// broker answers `-1:-1` (no readable message: an empty topic), `next_batch` returns
/// `Ok(None)`. Otherwise a message must come, and the source waits for it, `operation_timeout`
/// per wait, asking again after each empty wait, at most `max_retries` waits, then
/// [`Error::Unavailable`]. A reader whose stream ends is re-created from the last returned
/// position, never taken for the end. The end is asked for again on every call made at the
/// end, so a later call returns batches appended meanwhile.
pub struct PulsarSource {
    runtime: OwnRuntime,
    inner: SourceInner,
}

struct SourceInner {
    settings: PulsarSettings,
    client: Pulsar<TokioExecutor>,
    reader: Option<Reader<Vec<u8>, TokioExecutor>>,
    /// The requested start, inclusive.
    start: Option<MessageIdData>,
    /// The last message returned.
    last: Option<MessageIdData>,
    /// The topic's last message id, as last asked.
    end: Option<MessageIdData>,
    /// Batches of the last message not yet returned (a message may hold several).
    queued: VecDeque<StoredBatch>,
}

impl std::fmt::Debug for PulsarSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarSource")
            .field("topic", &self.inner.settings.topic)
            .field("last", &self.inner.last.as_ref().map(position))
            .finish()
    }
}

impl PulsarSource {
    /// Opens a reader on `settings.topic`, at the earliest message if `start` is `None`, else
    /// at the message `start` names (inclusive). `start` must be a [`WalPosition::Pulsar`].
    pub fn open(settings: PulsarSettings, start: Option<&WalPosition>) -> Result<Self> {
        settings.validate()?;
        let start = match start {
            None => None,
            Some(WalPosition::Pulsar {
                ledger_id,
                entry_id,
                partition,
                batch_index,
            }) => Some(MessageIdData {
                ledger_id: *ledger_id,
                entry_id: *entry_id,
                partition: Some(*partition),
                batch_index: (*batch_index >= 0).then_some(*batch_index),
                ..Default::default()
            }),
            Some(other) => {
                return Err(Error::Invalid {
                    reason: format!("a Pulsar source cannot start at {other:?}"),
                })
            }
        };
        let runtime = runtime("millpond-wal-pulsar-reader")?;
        let inner = runtime.block_on_with(|| async {
            let client = tokio::time::timeout(settings.guard_timeout(), build_client(&settings))
                .await
                .map_err(|_| Error::Unavailable {
                    reason: format!("connecting to {} timed out", settings.service_url),
                })??;
            let mut inner = SourceInner {
                settings,
                client,
                reader: None,
                start,
                last: None,
                end: None,
                queued: VecDeque::new(),
            };
            inner
                .with_retries("opening the reader", |s| Box::pin(s.ensure_reader()))
                .await?;
            Ok::<_, Error>(inner)
        })?;
        Ok(PulsarSource { runtime, inner })
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + 'a>>;

impl SourceInner {
    async fn with_retries<T>(
        &mut self,
        what: &str,
        mut op: impl for<'a> FnMut(
            &'a mut SourceInner,
        ) -> BoxFuture<'a, std::result::Result<T, Failure>>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            match op(self).await {
                Ok(v) => return Ok(v),
                Err(Failure::Retry { reason, rebuild }) => {
                    if rebuild {
                        self.reader = None;
                    }
                    if attempt >= self.settings.max_retries {
                        return Err(Error::Unavailable {
                            reason: format!(
                                "Pulsar topic {}: {what} failed {} times, last: {reason}",
                                self.settings.topic,
                                attempt + 1
                            ),
                        });
                    }
                    attempt += 1;
                    tokio::time::sleep(self.settings.backoff(attempt)).await;
                }
                Err(f) => {
                    return Err(match f.into_error() {
                        Error::Fenced { reason } => Error::Unavailable { reason },
                        e => e,
                    })
                }
            }
        }
    }

    /// Creates the reader if there is none, starting after the last returned message (the
    /// start id is inclusive; the already returned one is skipped) or at the requested start.
    async fn ensure_reader(&mut self) -> std::result::Result<(), Failure> {
        if self.reader.is_some() {
            return Ok(());
        }
        let mut options = ConsumerOptions::default()
            .durable(false)
            .with_initial_position(InitialPosition::Earliest)
            .with_receiver_queue_size(self.settings.reader_prefetch.max(1));
        if let Some(from) = self.last.as_ref().or(self.start.as_ref()) {
            options = options.starting_on_message(from.clone());
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("millpond-wal-replay-{}-{nanos:x}", std::process::id());
        let limit = self.settings.guard_timeout();
        let reader = guarded(
            limit,
            "opening the reader",
            self.client
                .reader()
                .with_topic(self.settings.topic.clone())
                .with_subscription(name.clone())
                .with_consumer_name(name)
                .with_batch_size(self.settings.reader_prefetch.max(1))
                .with_options(options)
                .into_reader::<Vec<u8>>(),
        )
        .await?;
        self.reader = Some(reader);
        Ok(())
    }

    /// Whether the topic holds a message after what we returned (or at/after the start), as
    /// far as the last answer of the broker tells.
    fn more_expected(&self) -> bool {
        let Some(end) = &self.end else { return false };
        let end = id_key(end);
        if end.0 < 0 || end.1 < 0 {
            // -1:-1 (or L:-1): the broker has no readable message (an empty topic, or all of
            // it deleted by retention)
            return false;
        }
        match (&self.last, &self.start) {
            (Some(last), _) => end > id_key(last),
            (None, Some(start)) => end >= id_key(start),
            (None, None) => true,
        }
    }

    async fn refresh_end(&mut self) -> std::result::Result<(), Failure> {
        self.ensure_reader().await?;
        let limit = self.settings.guard_timeout();
        let reader = self.reader.as_mut().expect("reader just ensured");
        let end = guarded(
            limit,
            "asking for the last message id",
            reader.get_last_message_id(),
        )
        .await?;
        self.end = Some(end);
        Ok(())
    }

    /// Whether `id` comes before what this source should return next.
    fn already_seen(&self, id: &MessageIdData) -> bool {
        match (&self.last, &self.start) {
            (Some(last), _) => id_key(id) <= id_key(last),
            (None, Some(start)) => id_key(id) < id_key(start),
            (None, None) => false,
        }
    }

    /// One wait for the next message: `Ok(None)` if none came in time.
    async fn receive(&mut self) -> std::result::Result<Option<StoredBatch>, Failure> {
        self.ensure_reader().await?;
        let wait = self.settings.operation_timeout;
        loop {
            let reader = self.reader.as_mut().expect("reader just ensured");
            let message = match tokio::time::timeout(wait, reader.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => {
                    return Err(Failure::Retry {
                        reason: "the reader stopped before the end of the topic".into(),
                        rebuild: true,
                    })
                }
                Ok(Some(Err(e))) => return Err(classify(&e)),
                Ok(Some(Ok(message))) => message,
            };
            let id = message.message_id.id.clone();
            if self.already_seen(&id) {
                continue; // before the start, or a re-delivery after a reconnection
            }
            let at = position(&id);
            self.last = Some(id);
            self.queued.extend(split_batches(at, message.payload.data));
            return Ok(self.queued.pop_front());
        }
    }

    async fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        if let Some(batch) = self.queued.pop_front() {
            return Ok(Some(batch));
        }
        let mut waits = 0;
        loop {
            if !self.more_expected() {
                // Maybe more arrived since we last asked.
                self.with_retries("asking for the last message id", |s| {
                    Box::pin(s.refresh_end())
                })
                .await?;
                if !self.more_expected() {
                    return Ok(None);
                }
            }
            match self
                .with_retries("reading", |s| Box::pin(s.receive()))
                .await?
            {
                Some(batch) => return Ok(Some(batch)),
                None => {
                    // Nothing came although the broker said there is more: ask again.
                    waits += 1;
                    if waits > self.settings.max_retries {
                        return Err(Error::Unavailable {
                            reason: format!(
                                "Pulsar topic {}: the broker reports messages up to {:?} but \
                                 none came after {:?} ({} waits of {:?})",
                                self.settings.topic,
                                self.end.as_ref().map(position),
                                self.last.as_ref().map(position),
                                waits,
                                self.settings.operation_timeout
                            ),
                        });
                    }
                    self.end = None;
                }
            }
        }
    }
}

impl WalSource for PulsarSource {
    fn next_batch(&mut self) -> Result<Option<StoredBatch>> {
        self.runtime.block_on_with(|| self.inner.next_batch())
    }
}

impl Drop for PulsarSource {
    fn drop(&mut self) {
        let inner = &mut self.inner;
        self.runtime.block_on(async {
            inner.reader.take();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_and_settings_validation() {
        let topic = wal_topic("public", "default", "wordcount", "3");
        assert_eq!(
            topic,
            "persistent://public/default/millpond-wal-wordcount-3"
        );
        assert!(PulsarSettings::for_topic("pulsar://127.0.0.1:6650", &topic)
            .validate()
            .is_ok());
        for bad in [
            "",
            "my-topic",
            "non-persistent://a/b/c",
            "persistent://a/b",
            "persistent://a//c",
        ] {
            let s = PulsarSettings::for_topic("pulsar://127.0.0.1:6650", bad);
            assert!(matches!(s.validate(), Err(Error::Invalid { .. })), "{bad}");
        }
        let s = PulsarSettings::for_topic("http://127.0.0.1:8080", &topic);
        assert!(matches!(s.validate(), Err(Error::Invalid { .. })));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = PulsarSettings::default();
        assert_eq!(s.backoff(1), Duration::from_millis(100));
        assert_eq!(s.backoff(2), Duration::from_millis(200));
        assert_eq!(s.backoff(7), Duration::from_secs(5));
        assert_eq!(s.backoff(100), Duration::from_secs(5));
    }

    #[test]
    fn remembered_batches_are_bounded_and_keep_the_newest() {
        let mut inner = SinkInner {
            settings: PulsarSettings::default(),
            client: None,
            producer: None,
            producers_created: 0,
            fenced: None,
            appended: VecDeque::new(),
            truncate_to: None,
        };
        for i in 0..20_000u64 {
            let id = MessageIdData {
                ledger_id: 7,
                entry_id: i,
                ..Default::default()
            };
            inner.remember(2 * i + 1, id);
            assert!(inner.appended.len() <= MAX_REMEMBERED);
            assert_eq!(inner.appended.back().unwrap().1.entry_id, i);
        }
        let lsns: Vec<u64> = inner.appended.iter().map(|(l, _)| *l).collect();
        assert!(lsns.windows(2).all(|w| w[0] < w[1]));
        assert!(inner.appended.len() > MAX_REMEMBERED / 2);
    }

    #[test]
    fn fencing_errors_are_recognised() {
        let fenced = pulsar::Error::Connection(ConnectionError::PulsarError(
            Some(ServerError::ProducerFenced),
            Some("Topic has an existing exclusive producer".into()),
        ));
        assert!(matches!(classify(&fenced), Failure::Fenced(_)));
        let wrapped = pulsar::Error::Producer(ProducerError::Custom(format!(
            "could not re-create the producer: {fenced}"
        )));
        assert!(matches!(classify(&wrapped), Failure::Fenced(_)));
        let down = pulsar::Error::Connection(ConnectionError::Disconnected);
        assert!(matches!(
            classify(&down),
            Failure::Retry { rebuild: false, .. }
        ));
    }
}
