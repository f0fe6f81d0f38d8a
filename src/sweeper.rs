//! The offline sweep: vantage6's node-status worker. Every interval, nodes
//! still `online` whose last `ping` is older than the start of the interval
//! are marked `offline`. No socket event is emitted, as in vantage6.

use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::{metrics::Metrics, store::Store};

/// Starts the sweep loop on the runtime; it runs until the task is aborted.
pub fn spawn(store: Store, metrics: Metrics, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let before = chrono::Utc::now().naive_utc();
            tokio::time::sleep(interval).await;
            match store.sweep_offline_nodes(before).await {
                Ok(0) => {}
                Ok(n) => info!(nodes = n, "marked silent nodes offline"),
                Err(e) => {
                    metrics.database_error();
                    error!(error = %e, "offline sweep failed");
                }
            }
        }
    })
}
