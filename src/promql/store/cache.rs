//! Summaries already read, kept by hour for the next query that reads the same hour the same
//! way (Grafana asks the same panels again at every refresh, and all but the newest hour of
//! a day are the same summaries each time).
//!
//! A kept hour is used only where it is exactly what the table holds in the reader's
//! snapshot: `system_metrics_minutes_versions` gives each hour a fresh version (a random
//! UUID, never the same twice, in any database) in the transaction of every statement that changes its summaries (whichever
//! instance, or person, runs it; see the migration `2026-12-07-170000_summary_versions`), and
//! the reader reads those versions in the snapshot it reads the summaries in. An hour kept at
//! version `v` is used while the snapshot's version of that hour is still `v`; an hour
//! without a version is never kept. Pending minutes are not filtered out of what is kept:
//! which minutes are pending is decided by each query's own snapshot.
//!
//! The memory is bounded: past [`Cache::limit`] bytes the hours used least recently go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::minutes::HOUR_MS;

/// The summaries of one hour as one read returned them: each row's series (by the raw bytes
/// of its label fields, and their values), its minute, sample count, last sample time, and
/// the fields read (`stride` of them a row).
#[derive(Debug, Default)]
pub(super) struct Hour {
    /// Its number ([`hour_of`]).
    pub(super) number: i64,
    pub(super) series: Vec<(Box<[u8]>, [String; 4])>,
    pub(super) rows: Vec<Row>,
    pub(super) values: Vec<f64>,
    pub(super) stride: usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Row {
    pub(super) series: u32,
    pub(super) minute_ms: i64,
    pub(super) count: f64,
    pub(super) last_ms: i64,
}

impl Hour {
    /// The bytes the hour holds, roughly, for the bound.
    fn bytes(&self) -> usize {
        let series: usize = self
            .series
            .iter()
            .map(|(key, labels)| {
                key.len() + labels.iter().map(String::len).sum::<usize>() + 4 * 24 + 16
            })
            .sum();
        series + self.rows.len() * std::mem::size_of::<Row>() + self.values.len() * 8 + 64
    }

    /// Adds the rows another read of the same hour made (a read split between two
    /// connections may cut an hour in two): only both halves are the whole hour.
    pub(super) fn absorb(&mut self, other: Hour) {
        let offset = self.series.len() as u32;
        self.series.extend(other.series);
        self.rows.extend(other.rows.into_iter().map(|row| Row {
            series: row.series + offset,
            ..row
        }));
        self.values.extend(other.values);
    }

    /// The values of row `i`.
    pub(super) fn values_of(&self, i: usize) -> &[f64] {
        &self.values[i * self.stride..(i + 1) * self.stride]
    }
}

struct Entry {
    version: Box<str>,
    hour: Arc<Hour>,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
struct State {
    /// By what the read asked (its select list and conditions) and the hour's number.
    entries: HashMap<(Arc<str>, i64), Entry>,
    bytes: usize,
    clock: u64,
}

/// Kept hours of summaries, at most `limit` bytes of them.
pub(crate) struct Cache {
    limit: usize,
    state: Mutex<State>,
}

impl Cache {
    pub(crate) fn new(limit: usize) -> Cache {
        Cache {
            limit,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether it keeps anything at all (a bound of 0 turns it off).
    pub(crate) fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// The hour `hour` as read by `read`, if kept at `version`.
    pub(super) fn get(&self, read: &Arc<str>, hour: i64, version: &str) -> Option<Arc<Hour>> {
        let mut state = self.state.lock().ok()?;
        state.clock += 1;
        let clock = state.clock;
        let key = (read.clone(), hour);
        match state.entries.get_mut(&key) {
            Some(entry) if *entry.version == *version => {
                entry.used = clock;
                Some(entry.hour.clone())
            }
            Some(_) => {
                // Changed since: it will not be asked at its old version again.
                if let Some(old) = state.entries.remove(&key) {
                    state.bytes -= old.bytes;
                }
                None
            }
            None => None,
        }
    }

    /// Keeps `hour` as read by `read` at `version`, making room if it must.
    pub(super) fn put(&self, read: &Arc<str>, number: i64, version: &str, hour: Hour) {
        let bytes = hour.bytes();
        if bytes > self.limit {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.clock += 1;
        let entry = Entry {
            version: version.into(),
            hour: Arc::new(hour),
            bytes,
            used: state.clock,
        };
        if let Some(old) = state.entries.insert((read.clone(), number), entry) {
            state.bytes -= old.bytes;
        }
        state.bytes += bytes;
        if state.bytes > self.limit {
            // The least recently used go first, down to three quarters of the bound, so that
            // the next few puts do not each sort the entries again.
            let mut order: Vec<(u64, (Arc<str>, i64))> = state
                .entries
                .iter()
                .map(|(key, entry)| (entry.used, key.clone()))
                .collect();
            order.sort_unstable_by_key(|(used, _)| *used);
            for (_, key) in order {
                if state.bytes <= self.limit / 4 * 3 {
                    break;
                }
                if let Some(old) = state.entries.remove(&key) {
                    state.bytes -= old.bytes;
                }
            }
        }
    }

    /// The bytes kept now, and how many hours.
    pub(crate) fn size(&self) -> (usize, usize) {
        self.state
            .lock()
            .map(|s| (s.bytes, s.entries.len()))
            .unwrap_or((0, 0))
    }

    /// What `/status` says of it: the bytes kept, the bound, the hours kept.
    pub(crate) fn report(&self) -> serde_json::Value {
        let (bytes, hours) = self.size();
        serde_json::json!({ "bytes": bytes, "limit_bytes": self.limit, "hours": hours })
    }
}

/// The hour of a minute end: minutes `(h × 1 h, (h + 1) × 1 h]` are hour `h`, as the
/// migration numbers them.
pub(super) fn hour_of(minute_ms: i64) -> i64 {
    (minute_ms - crate::db::summaries::MINUTE_MS).div_euclid(HOUR_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_right_closed_like_minutes() {
        assert_eq!(hour_of(60_000), 0);
        assert_eq!(hour_of(3_600_000), 0);
        assert_eq!(hour_of(3_660_000), 1);
        assert_eq!(hour_of(0), -1);
    }

    fn hour(rows: usize) -> Hour {
        Hour {
            number: 0,
            series: vec![(b"k".to_vec().into(), Default::default())],
            rows: vec![
                Row {
                    series: 0,
                    minute_ms: 60_000,
                    count: 1.0,
                    last_ms: 1,
                };
                rows
            ],
            values: vec![1.0; rows],
            stride: 1,
        }
    }

    #[test]
    fn an_hour_is_used_only_at_its_version_and_the_bound_holds() {
        let read: Arc<str> = "cpu_last".into();
        let cache = Cache::new(hour(1000).bytes() * 2 + 10);
        cache.put(&read, 1, "v7", hour(1000));
        assert!(cache.get(&read, 1, "v7").is_some());
        assert!(cache.get(&read, 1, "v8").is_none(), "another version");
        assert!(cache.get(&read, 1, "v7").is_none(), "dropped once changed");
        assert!(
            cache.get(&"cpu_sum".into(), 1, "v7").is_none(),
            "another read"
        );
        for number in 0..5 {
            cache.put(&read, number, "v1", hour(1000));
        }
        let (bytes, hours) = cache.size();
        assert!(bytes <= hour(1000).bytes() * 2 + 10, "{bytes}");
        assert!(hours <= 2);
        assert!(cache.get(&read, 4, "v1").is_some(), "the newest stays");
    }
}
