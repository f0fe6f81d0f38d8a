//! Test helpers for the real RabbitMQ: the URI, unique exchange names that are deleted at the
//! end, the lock that keeps the broker-restart test apart, and `rabbitmqctl`.
#![allow(dead_code)]

use std::{
    fs::File,
    process::Command,
    sync::{Arc, Mutex},
};

use lapin::{
    options::{BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeleteOptions},
    types::FieldTable,
    Connection, ConnectionProperties,
};

/// The broker under test: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn uri() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A unique exchange name `socketioxide-amqp-test-<what>-<uuid>`.
pub fn unique_exchange(what: &str) -> String {
    format!(
        "socketioxide-amqp-test-{what}-{}",
        uuid::Uuid::new_v4().simple()
    )
}

/// Deletes an exchange and the queues registered with it when dropped (also when the test
/// panics), over a fresh connection on its own thread.
pub struct BrokerCleanup {
    exchange: String,
    queues: Arc<Mutex<Vec<String>>>,
}

impl BrokerCleanup {
    /// Cleans up `exchange` at the end.
    pub fn new(exchange: &str) -> Self {
        Self {
            exchange: exchange.to_owned(),
            queues: Arc::default(),
        }
    }

    /// The exchange name.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Deletes `queue` too at the end.
    pub fn queue(&self, queue: impl Into<String>) {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(queue.into());
    }
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        let exchange = self.exchange.clone();
        let queues = std::mem::take(
            &mut *self
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let work = async {
                    let conn = Connection::connect(&uri(), ConnectionProperties::default()).await?;
                    let channel = conn.create_channel().await?;
                    for q in &queues {
                        // A queue may already be gone (deleted by a graceful close): a 404
                        // closes the channel, so each deletion gets its own.
                        let ch = conn.create_channel().await?;
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await?;
                    let _ = conn.close(200, "cleanup".into()).await;
                    Ok::<_, lapin::Error>(())
                };
                match tokio::time::timeout(std::time::Duration::from_secs(10), work).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("cleanup of exchange {exchange} failed: {e}"),
                    Err(_) => eprintln!("cleanup of exchange {exchange} timed out"),
                }
            });
        });
        let _ = done.join();
    }
}

/// A connection to the broker under test and a channel on it.
pub async fn open_channel() -> (Connection, lapin::Channel) {
    let conn = Connection::connect(&uri(), ConnectionProperties::default())
        .await
        .expect("connect to the broker");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// Binds `queue` to the fanout `exchange` and consumes it without acks, as `consumer_tag`.
pub async fn bind_and_consume(
    channel: &lapin::Channel,
    queue: &str,
    exchange: &str,
    consumer_tag: &str,
) -> lapin::Result<lapin::Consumer> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

// duplicates: deliberate — the two passive declarations differ in lapin's call and options only.
/// Whether exchange `name` exists (a passive declaration).
pub async fn exchange_exists(name: &str) -> bool {
    passive_declare(|channel| async move {
        channel
            .exchange_declare(
                name.into(),
                lapin::ExchangeKind::Fanout,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    })
    .await
}

/// Whether queue `name` exists (a passive declaration).
pub async fn queue_exists(name: &str) -> bool {
    passive_declare(|channel| async move {
        channel
            .queue_declare(
                name.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|_| ())
    })
    .await
}

/// Runs one passive declaration on a connection of its own (a failed one
/// closes the channel) and says whether it succeeded.
async fn passive_declare<F, Fut>(declare: F) -> bool
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = lapin::Result<()>>,
{
    let (conn, channel) = open_channel().await;
    let ok = declare(channel).await.is_ok();
    let _ = conn.close(200, "bye".into()).await;
    ok
}

/// An advisory lock on `$TMPDIR/socketioxide-amqp-rabbitmq.lock`: tests that use the broker take
/// it shared, the test that stops the broker takes it exclusive, so that it never runs while
/// another test binary (or another `cargo test`) uses RabbitMQ. Released when dropped, or when
/// the process dies.
pub struct BrokerLock(File);

impl BrokerLock {
    /// Takes the lock shared (many holders).
    pub fn shared() -> Self {
        Self::take(libc::LOCK_SH)
    }
    /// Takes the lock exclusive (waits for every shared holder).
    pub fn exclusive() -> Self {
        Self::take(libc::LOCK_EX)
    }
    fn take(mode: libc::c_int) -> Self {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("socketioxide-amqp-rabbitmq.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("lock file");
        // SAFETY: flock on a file descriptor we own; it is released when the file is closed.
        #[allow(unsafe_code, reason = "flock(2) has no safe std wrapper at our MSRV")]
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode) };
        assert_eq!(rc, 0, "flock {}", path.display());
        Self(file)
    }
}

/// Runs `rabbitmqctl ARGS`; `None` when it cannot be run here, else whether it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> Option<bool> {
    let out = Command::new("rabbitmqctl").args(args).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(out.status.success())
}
