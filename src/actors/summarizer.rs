//! The summarizer: a task, not an actor (nothing sends it messages), that keeps the per-minute
//! summaries of `system_metrics` (see [`crate::db::summaries`]) on a connection of its own,
//! off the write path. Every [`PERIOD`] it runs one pass; it reports to [`Stats::summaries`].
//!
//! The writers come first: while one of their mailboxes is at least half full, or database
//! writes are failing, it defers, at most [`MAX_DEFERRALS`] periods in a row so that summaries
//! never stop. A failed pass is one WARN line (again only when the error changes or
//! [`REPEAT_LOG`] has passed) and is tried again the next period; ingestion never waits for
//! it, whatever the cause, a missing privilege on the summary tables included.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::db::{self, DbError, Timeouts, summaries};
use crate::stats::{PassReport, Stats};

/// How often a pass runs. A reader takes a pending minute from raw samples, so this bounds
/// how many recent minutes it reads raw: a pass at a steady rate recomputes the minute or
/// two written since the last, a few thousand samples for 500 pods.
pub(crate) const PERIOD: Duration = Duration::from_secs(5);

/// How soon the next pass comes when the last one was bounded (a backlog of pending ranges):
/// a backlog is worked off at a slice a second rather than one a period.
const CATCH_UP: Duration = Duration::from_secs(1);

/// The most periods in a row a pass is deferred for the writers.
pub(crate) const MAX_DEFERRALS: u32 = 12;

/// How long the same failure goes unrepeated in the log.
const REPEAT_LOG: Duration = Duration::from_secs(600);

/// Starts the summarizer on the current runtime.
pub(crate) fn start(url: String, timeouts: Timeouts, stats: Arc<Stats>) {
    actix_rt::spawn(run(url, timeouts, stats));
}

async fn run(url: String, timeouts: Timeouts, stats: Arc<Stats>) {
    let mut client: Option<Client> = None;
    let mut deferred = 0;
    let mut logged: Option<(String, Instant)> = None;
    let mut wait = PERIOD;
    loop {
        tokio::time::sleep(wait).await;
        wait = PERIOD;
        if deferred < MAX_DEFERRALS && writers_behind(&stats) {
            deferred += 1;
            report(&stats, |r| r.deferred += 1);
            continue;
        }
        deferred = 0;
        let started = Instant::now();
        let outcome = match &client {
            Some(open) if !open.is_closed() => summaries::summarize(open, &timeouts).await,
            _ => match db::connect(&url, &timeouts).await {
                Ok(open) => summaries::summarize(client.insert(open), &timeouts).await,
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(Some(pass)) => {
                if logged.take().is_some() {
                    log::info!("summary pass succeeded again");
                }
                if pass.more {
                    wait = CATCH_UP;
                }
                let at_ms = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms);
                report(&stats, |r| {
                    r.passes += 1;
                    r.pending_ranges = Some(pass.pending_ranges);
                    r.oldest_pending = pass.oldest_pending_ms.and_then(at_ms);
                    r.error = None;
                    r.last_pass = Some(PassReport {
                        at: Utc::now(),
                        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                        minutes: pass.minutes,
                        rows: pass.rows,
                        hours: pass.hours,
                    });
                });
            }
            Ok(None) => report(&stats, |r| r.skipped += 1),
            Err(e) => {
                // An unanswered connection may hold its transaction open on the server: it is
                // given up, and the server's statement timeout ends what it still runs.
                if matches!(e, DbError::Timeout { .. }) {
                    client = None;
                }
                let error = explain(&e);
                let repeat = logged
                    .as_ref()
                    .is_some_and(|(last, at)| *last == error && at.elapsed() < REPEAT_LOG);
                if !repeat {
                    log::warn!(
                        "summary pass failed, retrying every {} s; queries read raw samples for the minutes pending meanwhile: {error}",
                        PERIOD.as_secs()
                    );
                    logged = Some((error.clone(), Instant::now()));
                }
                report(&stats, |r| r.error = Some(error));
            }
        }
    }
}

/// The error, with what to do where the service's role lacks a privilege on the summary
/// tables.
fn explain(error: &DbError) -> String {
    let refused = matches!(
        error,
        DbError::Query(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    );
    if refused {
        format!(
            "{error}; grant SELECT, INSERT, DELETE ON system_metrics_minutes, system_metrics_pending, system_metrics_hours to the service's role"
        )
    } else {
        error.to_string()
    }
}

/// Whether a writer's mailbox is at least half full or database writes are failing: the
/// writers need the database more than the summaries do.
fn writers_behind(stats: &Stats) -> bool {
    let full = stats.connections().iter().any(|c| {
        let capacity = c.mailbox.capacity.load(Ordering::Relaxed);
        capacity > 0 && c.mailbox.mailbox_depth() * 2 >= capacity
    });
    full || stats.database_error().is_some()
}

fn report(stats: &Stats, update: impl FnOnce(&mut crate::stats::SummaryReport)) {
    if let Ok(mut report) = stats.summaries.lock() {
        update(&mut report);
    }
}
