//! The simulator's pods as the steady producers (latency, soak) send them: each message a
//! random step of the pod's CPU and memory, stamped by the sender.

use anyhow::bail;
use panopticon::domain::WireMetric;
use panopticon::simulate::Simulator;
use serde_json::Value;

use crate::now_ms;

pub struct PodInfo {
    service: String,
    pub name: String,
    namespace: String,
    node: String,
    cpu: f64,
    memory: f64,
    /// The timestamp of the pod's last message.
    last_timestamp: i64,
}

impl PodInfo {
    /// A random step of CPU and memory, as a live pod's figures move.
    pub fn wander(&mut self, rng: &mut fastrand::Rng) {
        self.cpu = (self.cpu + (rng.f64() - 0.5) * 8.0).clamp(0.0, 100.0);
        self.memory = (self.memory + (rng.f64() - 0.5) * 16.0).clamp(16.0, 4096.0);
    }

    /// Writes the pod's message into `payload` (cleared first), stamped `now` or, if the pod
    /// already sent a message stamped `now` or later, a millisecond after that one; answers the
    /// stamp. A pod's timestamps only rise, as a sampler's do: a metric is known by its pod and
    /// time, so two messages of a pod in one millisecond (a producer that fell behind and
    /// catches up in a burst) would be one metric stored once, not two.
    pub fn write(&mut self, payload: &mut Vec<u8>, now: i64) -> serde_json::Result<i64> {
        let timestamp = now.max(self.last_timestamp + 1);
        self.last_timestamp = timestamp;
        payload.clear();
        serde_json::to_writer(
            payload,
            &WireMetric {
                timestamp,
                service: &self.service,
                pod_name: &self.name,
                namespace: &self.namespace,
                node_name: &self.node,
                cpu: (self.cpu * 100.0).round() / 100.0,
                memory: (self.memory * 100.0).round() / 100.0,
            },
        )?;
        Ok(timestamp)
    }
}

/// The simulator's first `pods` pods, with the figures of their first sample.
pub fn pod_infos(pods: u32) -> anyhow::Result<Vec<PodInfo>> {
    let mut simulator = Simulator::new(pods, 7);
    let mut infos = Vec::new();
    let mut failure = None;
    simulator.tick(now_ms(), |key, payload| {
        match serde_json::from_slice::<Value>(payload) {
            Ok(v) => infos.push(PodInfo {
                service: v["service"].as_str().unwrap_or_default().to_owned(),
                name: key.to_owned(),
                namespace: v["namespace"].as_str().unwrap_or_default().to_owned(),
                node: v["nodeName"].as_str().unwrap_or_default().to_owned(),
                cpu: v["cpu"].as_f64().unwrap_or(0.0),
                memory: v["memory"].as_f64().unwrap_or(0.0),
                last_timestamp: i64::MIN,
            }),
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        bail!("simulator payload: {e}");
    }
    Ok(infos)
}
