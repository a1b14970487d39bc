//! Builds the application: binds the HTTP listener, then connects the database and Kafka
//! (retrying until they answer) and starts the actors. `main` and `panopticon demo` run the
//! same [`Application`]. The black-box tests start the binary; the HTTP tests serve
//! [`crate::http::app`] in-process.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix::dev::channel::{self, AddressReceiver};
use actix::prelude::*;
use actix_web::HttpServer;
use actix_web::dev::Server;

use crate::actors::batch_writer::{self, BatchWriter};
use crate::actors::kafka_consumer::{self, ConsumerEvents, ConsumerOutput, KafkaConsumer};
use crate::actors::messages::{OffsetsStored, Stop};
use crate::actors::summarizer;
use crate::actors::validator::Validator;
use crate::actors::writers::{WriterInbox, Writers};
use crate::backoff::Retry;
use crate::config::Settings;
use crate::db::queries::SharedStorage;
use crate::db::{self, OffsetScope};
use crate::dead_letter::{self, DeadLetters};
use crate::http::AppState;
use crate::http::api::ApiState;
use crate::http::auth::Access;
use crate::log_limit::LogLimit;
use crate::secret::redact_url;
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is malformed: the service cannot start whatever it waits for.
    #[error("configuration error: {0}")]
    Config(String),
    #[error("cannot bind the HTTP server to {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
}

pub struct Application {
    server: Server,
    settings: Settings,
    stats: Arc<Stats>,
    /// What the REST API plans its queries by, set once the database is connected.
    api_storage: SharedStorage,
}

impl Application {
    /// Checks the settings and binds the HTTP listener; nothing is connected yet.
    pub fn build(settings: Settings) -> Result<Application, StartupError> {
        db::check_url(&settings.database.url).map_err(|e| StartupError::Config(e.to_string()))?;
        settings.check().map_err(StartupError::Config)?;
        kafka_consumer::check_config(&settings.kafka)
            .map_err(|e| StartupError::Config(format!("Kafka consumer settings: {e}")))?;
        let stats = Arc::new(Stats::default());
        let api_settings = &settings.api;
        let address = format!("{}:{}", api_settings.host, api_settings.port);
        let listener = TcpListener::bind(&address).map_err(|source| StartupError::Bind {
            address: address.clone(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { address, source })?
            .port();
        let pool = crate::db::queries::pool(
            &settings.database.url,
            api_settings.db_pool_size as usize,
            &db::Timeouts::from(&settings.database),
        )
        .map_err(|e| StartupError::Config(format!("database pool: {e}")))?;
        let api_storage = SharedStorage::default();
        crate::promql::store::set_summary_cache_bytes(
            (api_settings.prometheus_summary_cache_mb as usize) << 20,
        );
        let api = ApiState {
            pool,
            storage: api_storage.clone(),
            max_limit: api_settings.max_limit,
            max_range: chrono::Duration::hours(api_settings.max_range_hours as i64),
            max_buckets: api_settings.max_buckets,
            max_samples: api_settings.prometheus_max_samples,
        };
        let access = Access::new(
            api_settings.auth_token.clone(),
            api_settings.metrics_require_auth,
        );
        let state = AppState::new(stats.clone(), api, access);
        let server = HttpServer::new(move || crate::http::app(state.clone()))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .map_err(|e| StartupError::Runtime(e.to_string()))?
            .run();
        log::info!("Application is running on: http://localhost:{port}");
        if api_settings.auth_token.is_none() {
            log::warn!(
                "HTTP authentication is off: the dashboard, /status and /api/v1 answer anyone who reaches port={port}; set HTTP_AUTH_TOKEN or HTTP_AUTH_TOKEN_FILE to require a token"
            );
        }
        Ok(Application {
            server,
            settings,
            stats,
            api_storage,
        })
    }

    /// Runs until `shutdown` resolves, then stops consuming, flushes, commits and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartupError> {
        let Application {
            server,
            settings,
            stats,
            api_storage,
            ..
        } = self;
        let handle = server.handle();
        let sampled = stats.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sampled.sample_rates();
            }
        });
        let server_task = actix_rt::spawn(server);
        tokio::pin!(shutdown);

        let pipeline = tokio::select! {
            pipeline = start_pipeline(&settings, stats.clone(), &api_storage) => Some(pipeline?),
            () = &mut shutdown => None,
        };
        if let Some(consumer) = pipeline {
            shutdown.await;
            log::info!("shutting down: stopping consumption, flushing and committing");
            match tokio::time::timeout(settings.shutdown_timeout(), consumer.send(Stop)).await {
                Ok(_) => log::info!("pipeline drained"),
                Err(_) => {
                    handle.stop(false).await;
                    return Err(StartupError::Runtime(format!(
                        "shutdown did not finish within {} ms; unflushed metrics will be consumed again on restart",
                        settings.shutdown_timeout_ms
                    )));
                }
            }
        } else {
            log::info!("shutting down before the pipeline started");
        }
        handle.stop(true).await;
        let _ = server_task.await;
        log::info!("stopped");
        Ok(())
    }
}

/// Connects, migrates and starts the actors (the consumer, the validator and one batch writer
/// per writer connection); retries what is unreachable.
///
/// The actors know each other only by the messages they send: the consumer's rebalance
/// callback tells the writers what changed hands, the writers tell the consumer what is
/// stored. The addresses exist before the actors: the writers' are taken before the Kafka
/// consumer is made, the consumer's before the writers start.
async fn start_pipeline(
    settings: &Settings,
    stats: Arc<Stats>,
    api_storage: &SharedStorage,
) -> Result<Addr<KafkaConsumer>, StartupError> {
    let storage = connect_database(settings, &stats, api_storage).await;
    // A metric the retention job would delete once stored is rejected instead.
    let max_age_ms = db::timescale::retention_ms(storage, &settings.timescale);
    if let Ok(mut slot) = stats.max_age_ms.lock() {
        *slot = max_age_ms;
    }
    let kafka = &settings.kafka;
    let scope = OffsetScope {
        group: kafka.group_id.clone(),
        topic: kafka.topic.clone(),
    };
    let writers = UnstartedWriters::new(settings.batching.connections, &stats);
    let events = ConsumerEvents::new(
        kafka,
        Box::new(db::OffsetReader {
            url: settings.database.url.clone(),
            timeouts: db::Timeouts::from(&settings.database),
            scope: scope.clone(),
        }),
        writers.destination.clone(),
        stats.clone(),
    );
    let consumer = kafka_consumer::create_consumer(kafka, events)
        .map_err(|e| StartupError::Config(format!("Kafka consumer settings: {e}")))?;
    let consumer = kafka_consumer::wait_for_broker(consumer, kafka, &stats)
        .await
        .map_err(StartupError::Runtime)?;
    dead_letter::ensure_topic_at_start(kafka, stats.clone()).await;
    let dead_letters = DeadLetters::new(kafka)
        .map_err(|e| StartupError::Config(format!("dead-letter producer: {e}")))?;

    let consumer_context = Context::<KafkaConsumer>::new();
    let on_stored = consumer_context.address().recipient();
    let writers = writers.start(settings, scope, on_stored, &dead_letters, &stats);
    // Off the write path, on a connection of its own.
    summarizer::start(
        settings.database.url.clone(),
        db::Timeouts::from(&settings.database),
        stats.clone(),
    );
    let validator = Validator::new(
        &settings.validator,
        max_age_ms,
        writers,
        dead_letters,
        stats.clone(),
    )
    .start();
    let output = ConsumerOutput {
        chunks: validator.clone().recipient(),
        drain: validator.recipient(),
    };
    let consumer = KafkaConsumer::new(consumer, kafka, output, stats.clone())
        .map_err(|e| StartupError::Config(format!("cannot subscribe: {e}")))?;
    Ok(consumer_context.run(consumer))
}

/// The batch writers before they start, one per writer connection: their addresses, which
/// the consumer's rebalance callback is given before the consumer exists, and the one
/// destination they make.
struct UnstartedWriters {
    each: Vec<Unstarted<BatchWriter>>,
    destination: Arc<Writers>,
}

impl UnstartedWriters {
    fn new(connections: u32, stats: &Stats) -> UnstartedWriters {
        let each: Vec<Unstarted<BatchWriter>> =
            (0..connections).map(|_| Unstarted::new()).collect();
        let inboxes = each
            .iter()
            .map(|writer| WriterInbox {
                chunks: writer.address().recipient(),
                rebalanced: writer.address().recipient(),
                flush: writer.address().recipient(),
                stats: stats.add_connection(),
            })
            .collect();
        UnstartedWriters {
            each,
            destination: Arc::new(Writers::new(inboxes)),
        }
    }

    /// Starts each writer on a thread of its own, with its database connection: its round
    /// trips to the database are then never queued behind parsing on the consumer's thread,
    /// nor behind another writer's. Answers with their destination.
    fn start(
        self,
        settings: &Settings,
        scope: OffsetScope,
        on_stored: Recipient<OffsetsStored>,
        dead_letters: &DeadLetters,
        stats: &Arc<Stats>,
    ) -> Arc<Writers> {
        // One budget of `[METRIC]` lines for all writers.
        let metric_log = Arc::new(std::sync::Mutex::new(LogLimit::new(
            "[METRIC] lines",
            settings.batching.metric_log_max_per_sec,
        )));
        for (index, writer) in self.each.into_iter().enumerate() {
            let wiring = batch_writer::Wiring {
                target: batch_writer::Target {
                    url: settings.database.url.clone(),
                    timeouts: db::Timeouts::from(&settings.database),
                    scope: scope.clone(),
                },
                on_stored: on_stored.clone(),
                dead_letters: dead_letters.clone(),
                metric_log: metric_log.clone(),
                stats: stats.clone(),
                connection: self.destination.inbox(index).stats.clone(),
            };
            let thread = Arbiter::new();
            writer.start_in(
                &thread.handle(),
                BatchWriter::new(&settings.batching, wiring),
            );
        }
        self.destination
    }
}

/// An actor's address before the actor exists: what is sent to it waits in its mailbox.
struct Unstarted<A: Actor<Context = Context<A>>> {
    address: Addr<A>,
    mailbox: AddressReceiver<A>,
}

impl<A: Actor<Context = Context<A>> + Send> Unstarted<A> {
    fn new() -> Unstarted<A> {
        // The mailbox's capacity until the actor sets its own when it starts.
        let (sender, mailbox) = channel::channel(16);
        Unstarted {
            address: Addr::new(sender),
            mailbox,
        }
    }

    fn address(&self) -> Addr<A> {
        self.address.clone()
    }

    /// Starts the actor on `arbiter`'s thread.
    fn start_in(self, arbiter: &ArbiterHandle, actor: A) -> Addr<A> {
        let mailbox = self.mailbox;
        arbiter.spawn_fn(move || {
            actix_rt::spawn(Context::with_receiver(mailbox).into_future(actor));
        });
        self.address
    }
}

/// Connects, migrates and prepares the storage, retrying with backoff; logs the failure once,
/// then again only when it changes or a minute has passed. Answers with the storage found, and
/// tells the REST API what it may query.
async fn connect_database(
    settings: &Settings,
    stats: &Stats,
    api_storage: &SharedStorage,
) -> db::Storage {
    let url = &settings.database.url;
    let timeouts = db::Timeouts::from(&settings.database);
    let mut retry = Retry::new("database");
    let (client, found) = loop {
        match db::prepare(url, &timeouts).await {
            Ok(prepared) => break prepared,
            Err(e) => {
                stats.set_database_error(Some(e.to_string()));
                retry.failed(&e.to_string()).await;
            }
        }
    };
    log::info!(
        "database connected url={} storage={}",
        redact_url(url),
        found.description
    );
    // The connection is given up right after.
    let storage = db::timescale::set_up(
        &client,
        found.storage,
        &settings.timescale,
        timeouts.statement,
    )
    .await;
    api_storage.set(storage);
    if let Ok(mut slot) = stats.storage.lock() {
        *slot = Some(found.description);
    }
    stats.set_database_error(None);
    storage
}
