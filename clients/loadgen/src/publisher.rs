//! Open-loop pacing (events at a fixed rate, whatever the receivers do) and the RabbitMQ
//! publisher of `new_task`, our `AmqpEmitter` publishing exactly as vantage6's REST API does.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use socketioxide_amqp::{AmqpConfig, AmqpDriver, AmqpEmitter, BrokerUri, DataFormat};
use tokio::{sync::Semaphore, time::Instant};

use crate::{
    stats::{now_us, whole},
    wire::NAMESPACE,
};

/// How far behind its schedule a paced loop fell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pacing {
    /// Events issued.
    pub events: u64,
    /// Largest delay of an event behind its scheduled time.
    pub max_lag: Duration,
    /// When the last event was issued, after the start.
    pub elapsed: Duration,
}

impl Pacing {
    /// Whether the loop could not hold the rate: the whole run took 2 % longer than planned.
    ///
    /// A single late event is not: latency is measured from the time an event is actually
    /// published, so a scheduling hiccup of the load generator delays a few events without
    /// changing what is measured; it shows as [`Pacing::max_lag`] in the result.
    pub fn behind(&self, planned: Duration) -> bool {
        self.elapsed.as_secs_f64() > planned.as_secs_f64() * 1.02 + 0.01
    }
}

/// Calls `issue(j)` for `j` in `0..total`, event `j` at `start + j / per_s`, on a 1 ms timer:
/// every tick issues what is due. `issue` may wait (back-pressure), which shows as lag.
pub async fn pace<F, Fut>(start: Instant, per_s: f64, total: u64, mut issue: F) -> Pacing
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut p = Pacing::default();
    let per_s = per_s.max(1e-9);
    let mut j = 0u64;
    tokio::time::sleep_until(start).await;
    while j < total {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        let due = (whole(elapsed * per_s) + 1).min(total);
        while j < due {
            let scheduled = start + Duration::from_secs_f64(j as f64 / per_s);
            p.max_lag = p
                .max_lag
                .max(Instant::now().saturating_duration_since(scheduled));
            issue(j).await;
            j += 1;
        }
        if j < total {
            let next = start + Duration::from_secs_f64(j as f64 / per_s);
            tokio::time::sleep_until(next.max(Instant::now() + Duration::from_micros(500))).await;
        }
    }
    p.events = total;
    p.elapsed = Instant::now().saturating_duration_since(start);
    p
}

/// Publishes `new_task` to collaboration rooms through RabbitMQ.
#[derive(Debug, Clone)]
pub struct Publisher {
    emitter: AmqpEmitter<AmqpDriver>,
    in_flight: Arc<Semaphore>,
    failures: Arc<AtomicU64>,
}

/// Publishes allowed in flight at once.
const IN_FLIGHT: usize = 512;

impl Publisher {
    /// Connects to the broker (kombu URI rules) and declares the exchange.
    pub async fn connect(uri: &str, exchange: &str, format: DataFormat) -> anyhow::Result<Self> {
        let uri: BrokerUri = uri
            .parse()
            .map_err(|e| anyhow::anyhow!("--amqp-uri: {e}"))?;
        let config = AmqpConfig::new(uri.into()).with_exchange(exchange);
        let driver = AmqpDriver::connect_publisher(config)
            .await
            .map_err(|e| anyhow::anyhow!("RabbitMQ: {e}"))?;
        Ok(Self {
            emitter: AmqpEmitter::with_data_format(driver, format).of(NAMESPACE),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            failures: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Publishes `new_task` `{"id": seq, "parent_id": null, "step": step, "sent_us": now}` to
    /// `collaboration_<collaboration>` without waiting for the broker (bounded in flight).
    pub async fn new_task(&self, collaboration: u64, step: u32, seq: u64) {
        let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
            return;
        };
        let target = self.emitter.to(format!("collaboration_{collaboration}"));
        let failures = self.failures.clone();
        let data = serde_json::json!({
            "id": seq, "parent_id": null, "step": step, "sent_us": now_us(),
        });
        tokio::spawn(async move {
            if target.emit("new_task", &data).await.is_err() {
                failures.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }

    /// Waits until every publish has been handed to the broker; returns the failures so far.
    pub async fn flush(&self) -> u64 {
        if let Ok(all) = self.in_flight.acquire_many(IN_FLIGHT as u32).await {
            drop(all);
        }
        self.failures.swap(0, Ordering::AcqRel)
    }

    /// Closes the broker connection.
    pub async fn close(&self) {
        self.emitter.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pace_issues_every_event_on_schedule() {
        let start = Instant::now();
        let mut times = Vec::new();
        let p = pace(start, 1000.0, 100, |_| {
            times.push(Instant::now());
            async {}
        })
        .await;
        assert_eq!(p.events, 100);
        assert_eq!(times.len(), 100);
        assert!(!p.behind(Duration::from_millis(100)));
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn behind_means_the_rate_was_not_held_not_one_late_event() {
        let planned = Duration::from_secs(10);
        let hiccup = Pacing {
            events: 3000,
            max_lag: Duration::from_millis(300),
            elapsed: Duration::from_millis(10_050),
        };
        assert!(!hiccup.behind(planned));
        let slow = Pacing {
            elapsed: Duration::from_millis(10_300),
            ..hiccup
        };
        assert!(slow.behind(planned));
    }
}
