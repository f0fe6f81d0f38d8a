//! The one JSON line each measurement prints (field names: the contract in the crate README).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stats::LatencyMs;

/// Clients per transport.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TransportCounts {
    /// Websocket clients.
    pub websocket: u64,
    /// Long-polling clients.
    pub polling: u64,
}

/// One result line; absent fields are left out.
#[derive(Debug, Clone, Default, Serialize)]
#[allow(missing_docs)]
pub struct Line {
    pub scenario: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub urls: Vec<String>,
    pub nodes: u64,
    pub transport: TransportCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencyMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher_lag_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher_behind: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_saturated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_disconnected_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kib_per_connection: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_s: Option<f64>,
    pub errors: Vec<String>,
}

impl Line {
    /// Prints the line on stdout.
    pub fn print(&self) {
        match serde_json::to_string(self) {
            Ok(s) => println!("{s}"),
            Err(e) => tracing::error!(error = %e, "cannot serialize a result line"),
        }
    }
}

/// Error kinds with their counts, as `kind ×n` strings.
pub fn error_list(errors: &BTreeMap<String, u64>) -> Vec<String> {
    errors
        .iter()
        .map(|(k, n)| {
            if *n == 1 {
                k.clone()
            } else {
                format!("{k} x{n}")
            }
        })
        .collect()
}

/// Rounds to 3 decimals for readable lines.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
