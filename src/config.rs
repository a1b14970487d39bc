//! Settings: every option is an environment variable with an equivalent flag, and `--help`
//! lists each with its default.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::kafka_security::KafkaSecurity;
pub use crate::secret::Secret;
use crate::secret::{both_set, read_secret_file, secret_from_file};

/// Panopticon: a Kafka-to-TimescaleDB ingester for Kubernetes pod metrics.
#[derive(Debug, Parser)]
#[command(name = "panopticon", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,
}

impl Cli {
    /// Parses the flags and the environment (exiting with clap's message when one is
    /// malformed), then reads the secrets given as files (`*_FILE`).
    pub fn load() -> Result<Cli, String> {
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        cli.settings.read_secret_files(&matches)?;
        if let Some(Command::Simulate(args)) = &mut cli.command {
            args.kafka_security.read_secret_files()?;
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ingester (the default when no subcommand is given).
    Run,
    /// Run the whole pipeline against an in-process Kafka-protocol broker fed by simulated
    /// pods; only a PostgreSQL is needed.
    Demo(DemoArgs),
    /// Produce simulated Fluent Bit pod metrics to a Kafka broker.
    Simulate(Box<SimulateArgs>),
}

/// Everything the ingester needs to run, in one group per part of the service that uses it.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub kafka: KafkaSettings,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub validator: ValidatorSettings,

    #[command(flatten)]
    pub batching: BatchSettings,

    #[command(flatten)]
    pub api: ApiSettings,

    #[command(flatten)]
    pub timescale: TimescaleSettings,

    /// Most time (ms) a graceful shutdown may take to flush and commit before giving up.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 30_000)]
    pub shutdown_timeout_ms: u64,
}

/// The Kafka consumer's settings: where it reads, as whom, and how much at a time.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaSettings {
    /// Kafka bootstrap servers, comma separated.
    #[arg(
        id = "kafka_brokers",
        value_name = "KAFKA_BROKERS",
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "localhost:9092"
    )]
    pub brokers: String,

    /// Topic the metrics are consumed from.
    #[arg(
        id = "kafka_topic",
        value_name = "KAFKA_TOPIC",
        long = "kafka-topic",
        env = "KAFKA_TOPIC",
        default_value = "metrics.system"
    )]
    pub topic: String,

    /// Kafka consumer group; instances sharing it share the topic's partitions.
    #[arg(
        id = "kafka_group_id",
        value_name = "KAFKA_GROUP_ID",
        long = "kafka-group-id",
        env = "KAFKA_GROUP_ID",
        default_value = "panopticon"
    )]
    pub group_id: String,

    /// Topic every message that cannot be stored is dead-lettered to, with the reason in its
    /// headers.
    #[arg(
        id = "kafka_dlq_topic",
        value_name = "KAFKA_DLQ_TOPIC",
        long = "kafka-dlq-topic",
        env = "KAFKA_DLQ_TOPIC",
        default_value = "metrics.system.dlq"
    )]
    pub dlq_topic: String,

    /// Partitions of the dead-letter topic when Panopticon creates it at start-up (it does so
    /// only where the topic is missing; the replication factor is the broker's default).
    #[arg(id = "kafka_dlq_partitions", value_name = "KAFKA_DLQ_PARTITIONS", long = "kafka-dlq-partitions", env = "KAFKA_DLQ_PARTITIONS", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub dlq_partitions: i32,

    /// Longest wait for an answer from a Kafka broker, and for a new connection to one; past
    /// it the connection is closed and made again (ms). Consumer and dead-letter producer.
    #[arg(id = "kafka_socket_timeout_ms", value_name = "KAFKA_SOCKET_TIMEOUT_MS", long = "kafka-socket-timeout-ms", env = "KAFKA_SOCKET_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub socket_timeout_ms: u64,

    /// Extra librdkafka consumer properties, `key=value` pairs separated by commas; they
    /// override Panopticon's own consumer defaults.
    #[arg(id = "kafka_consumer_config", value_name = "KAFKA_CONSUMER_CONFIG", long = "kafka-consumer-config", env = "KAFKA_CONSUMER_CONFIG", default_value = "", value_parser = parse_properties)]
    pub consumer_config: Properties,

    /// Consumer group protocol: `classic` (the group's leader assigns partitions, every
    /// broker since Kafka 0.10 has it) or `consumer` (KIP-848: the broker assigns them, Kafka
    /// 4.0 and later; session timeout, heartbeat and assignment strategy are then the
    /// broker's group settings).
    #[arg(
        id = "kafka_group_protocol",
        value_name = "KAFKA_GROUP_PROTOCOL",
        long = "kafka-group-protocol",
        env = "KAFKA_GROUP_PROTOCOL",
        default_value = "classic",
        value_enum
    )]
    pub group_protocol: GroupProtocol,

    /// Most Kafka records the consumer hands to the validator in one chunk.
    #[arg(id = "consumer_chunk_max", value_name = "CONSUMER_CHUNK_MAX", long = "consumer-chunk-max", env = "CONSUMER_CHUNK_MAX", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub chunk_max: u32,

    #[command(flatten)]
    pub security: KafkaSecurity,
}

/// The consumer group protocol (`group.protocol` of librdkafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupProtocol {
    /// The group's leader assigns the partitions; rebalances are cooperative-sticky.
    Classic,
    /// KIP-848: the group coordinator assigns the partitions, one member at a time.
    Consumer,
}

impl GroupProtocol {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// How every database connection is made and bounded: the writer's, the API's, start-up's.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseSettings {
    /// PostgreSQL/TimescaleDB connection URL; libpq's `sslmode` (disable, prefer, require,
    /// verify-ca, verify-full), `sslrootcert`, `sslcert` and `sslkey` apply.
    #[arg(
        id = "database_url",
        value_name = "DATABASE_URL",
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://admin:admin123@localhost:5433/panopticon"
    )]
    pub url: String,

    /// File holding the database URL (a trailing newline is ignored).
    #[arg(
        id = "database_url_file",
        value_name = "DATABASE_URL_FILE",
        long = "database-url-file",
        env = "DATABASE_URL_FILE"
    )]
    pub url_file: Option<PathBuf>,

    /// Longest wait for a new database connection: TCP, TLS, authentication (ms).
    #[arg(id = "database_connect_timeout_ms", value_name = "DATABASE_CONNECT_TIMEOUT_MS", long = "database-connect-timeout-ms", env = "DATABASE_CONNECT_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub connect_timeout_ms: u64,

    /// Longest wait for the answer to one database round trip (a statement, a COPY, a
    /// commit); past it the connection is given up and a new one made (ms).
    #[arg(id = "database_statement_timeout_ms", value_name = "DATABASE_STATEMENT_TIMEOUT_MS", long = "database-statement-timeout-ms", env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub statement_timeout_ms: u64,

    /// TCP keep-alive of database connections: one silent this long is probed, every third of
    /// it after, and closed after three unanswered probes (ms, whole seconds).
    #[arg(id = "database_keepalive_ms", value_name = "DATABASE_KEEPALIVE_MS", long = "database-keepalive-ms", env = "DATABASE_KEEPALIVE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1000..=7_200_000))]
    pub keepalive_ms: u64,
}

/// The validator's settings: what it accepts and how much it queues and logs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Validation")]
pub struct ValidatorSettings {
    /// How far in the future a metric's timestamp may lie (ms) before it is rejected.
    #[arg(id = "max_future_skew_ms", value_name = "MAX_FUTURE_SKEW_MS", long = "max-future-skew-ms", env = "MAX_FUTURE_SKEW_MS", default_value_t = 300_000, value_parser = clap::value_parser!(i64).range(0..=3_153_600_000_000))]
    pub max_future_skew_ms: i64,

    /// Mailbox capacity of the validator, in chunks.
    #[arg(id = "validator_mailbox_capacity", value_name = "VALIDATOR_MAILBOX_CAPACITY", long = "validator-mailbox-capacity", env = "VALIDATOR_MAILBOX_CAPACITY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub mailbox_capacity: u32,

    /// Most "invalid message skipped" warnings logged a second; the rest are summed up in one
    /// line (every rejected message is still counted and dead-lettered).
    #[arg(
        id = "rejection_log_max_per_sec",
        value_name = "REJECTION_LOG_MAX_PER_SEC",
        long = "rejection-log-max-per-sec",
        env = "REJECTION_LOG_MAX_PER_SEC",
        default_value_t = 100
    )]
    pub rejection_log_max_per_sec: u32,
}

/// The batch writer's settings: when a batch is flushed, how much waits for it, what it logs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Batching")]
pub struct BatchSettings {
    /// A batch is flushed to the database when it holds this many rows, the most it holds.
    #[arg(id = "batch_max_rows", value_name = "BATCH_MAX_ROWS", long = "batch-max-rows", env = "BATCH_MAX_ROWS", default_value_t = 10000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_rows: u32,

    /// A batch is flushed to the database when its oldest row has waited this long (ms).
    #[arg(id = "batch_max_wait_ms", value_name = "BATCH_MAX_WAIT_MS", long = "batch-max-wait-ms", env = "BATCH_MAX_WAIT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub max_wait_ms: u64,

    /// Whether a writer with nothing else to do flushes what it holds at once (group commit:
    /// batches then grow only while a flush runs); `false` waits for the size or time trigger.
    #[arg(id = "batch_flush_when_idle", value_name = "BATCH_FLUSH_WHEN_IDLE", long = "batch-flush-when-idle", env = "BATCH_FLUSH_WHEN_IDLE", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub flush_when_idle: bool,

    /// Database connections writing rows, each a batch writer owning a disjoint set of the
    /// assigned partitions; more than the partitions assigned leaves some idle.
    #[arg(id = "writer_connections", value_name = "WRITER_CONNECTIONS", long = "writer-connections", env = "WRITER_CONNECTIONS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,

    /// Mailbox capacity of each batch writer, in chunks.
    #[arg(id = "writer_mailbox_capacity", value_name = "WRITER_MAILBOX_CAPACITY", long = "writer-mailbox-capacity", env = "WRITER_MAILBOX_CAPACITY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub mailbox_capacity: u32,

    /// Most `[METRIC]` lines printed a second; the rest are summed up in one line.
    #[arg(
        id = "metric_log_max_per_sec",
        value_name = "METRIC_LOG_MAX_PER_SEC",
        long = "metric-log-max-per-sec",
        env = "METRIC_LOG_MAX_PER_SEC",
        default_value_t = 100
    )]
    pub metric_log_max_per_sec: u32,
}

/// The HTTP server's settings: where it listens, whom it answers, how much a query may ask.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP API")]
pub struct ApiSettings {
    /// Port of the HTTP server (0 picks a free port).
    #[arg(
        id = "http_port",
        value_name = "HTTP_PORT",
        long = "http-port",
        env = "HTTP_PORT",
        default_value_t = 3001
    )]
    pub port: u16,

    /// Address the HTTP server binds to.
    #[arg(
        id = "http_host",
        value_name = "HTTP_HOST",
        long = "http-host",
        env = "HTTP_HOST",
        default_value = "0.0.0.0"
    )]
    pub host: String,

    /// Token the dashboard, `/status` and `/api/v1` require, as `Authorization: Bearer` or as
    /// the HTTP Basic password (prefer HTTP_AUTH_TOKEN_FILE); unset: open to anyone.
    #[arg(
        id = "http_auth_token",
        value_name = "HTTP_AUTH_TOKEN",
        long = "http-auth-token",
        env = "HTTP_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<Secret>,

    /// File holding the HTTP token (a trailing newline is ignored).
    #[arg(
        id = "http_auth_token_file",
        value_name = "HTTP_AUTH_TOKEN_FILE",
        long = "http-auth-token-file",
        env = "HTTP_AUTH_TOKEN_FILE"
    )]
    pub auth_token_file: Option<PathBuf>,

    /// Whether `/metrics` requires the HTTP token too (it is open by default, for scrapers).
    #[arg(id = "metrics_require_auth", value_name = "METRICS_REQUIRE_AUTH", long = "metrics-require-auth", env = "METRICS_REQUIRE_AUTH", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics_require_auth: bool,

    /// Most rows one REST request returns.
    #[arg(id = "api_max_limit", value_name = "API_MAX_LIMIT", long = "api-max-limit", env = "API_MAX_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_limit: u32,

    /// Widest time range one REST request may cover, in hours.
    #[arg(id = "api_max_range_hours", value_name = "API_MAX_RANGE_HOURS", long = "api-max-range-hours", env = "API_MAX_RANGE_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u32).range(1..=87_600))]
    pub max_range_hours: u32,

    /// Most buckets per group a series request may ask for (range / bucket).
    #[arg(id = "api_max_buckets", value_name = "API_MAX_BUCKETS", long = "api-max-buckets", env = "API_MAX_BUCKETS", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_buckets: u32,

    /// Most samples one PromQL query of `/prometheus/api/v1` may read and hold (those read
    /// plus every intermediate result's points; 16 bytes each); more is refused with 422. The
    /// default holds a day of 500 pods at a 10 s interval with its result.
    #[arg(id = "prometheus_max_samples", value_name = "PROMETHEUS_MAX_SAMPLES", long = "prometheus-max-samples", env = "PROMETHEUS_MAX_SAMPLES", default_value_t = 10_000_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub prometheus_max_samples: u32,

    /// Most MiB of per-minute summaries PromQL keeps in memory between queries, by hour, for
    /// the next query that reads the same hours (Grafana's refreshes); 0 keeps none. Each
    /// kept hour is checked, in every query's snapshot, to be what the database holds.
    #[arg(id = "prometheus_summary_cache_mb", value_name = "PROMETHEUS_SUMMARY_CACHE_MB", long = "prometheus-summary-cache-mb", env = "PROMETHEUS_SUMMARY_CACHE_MB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub prometheus_summary_cache_mb: u32,

    /// Connections the REST API may hold to the database.
    #[arg(id = "api_db_pool_size", value_name = "API_DB_POOL_SIZE", long = "api-db-pool-size", env = "API_DB_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub db_pool_size: u32,
}

/// What TimescaleDB's jobs do with old data, where TimescaleDB is present.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TimescaleDB")]
pub struct TimescaleSettings {
    /// Where TimescaleDB is present: compress chunks older than this (`off`: never).
    #[arg(id = "timescale_compress_after", value_name = "TIMESCALE_COMPRESS_AFTER", long = "timescale-compress-after", env = "TIMESCALE_COMPRESS_AFTER", default_value = "7d", value_parser = parse_policy_age)]
    pub compress_after: PolicyAge,

    /// Where TimescaleDB is present: drop chunks older than this (`off`: keep everything).
    #[arg(id = "timescale_retention", value_name = "TIMESCALE_RETENTION", long = "timescale-retention", env = "TIMESCALE_RETENTION", default_value = "30d", value_parser = parse_policy_age)]
    pub retention: PolicyAge,

    /// Where TimescaleDB is present: the span of time each new chunk covers (chunks already
    /// made keep theirs).
    #[arg(id = "timescale_chunk_interval", value_name = "TIMESCALE_CHUNK_INTERVAL", long = "timescale-chunk-interval", env = "TIMESCALE_CHUNK_INTERVAL", default_value = "1d", value_parser = parse_chunk_interval)]
    pub chunk_interval_secs: i64,
}

impl Settings {
    /// Reads the secrets given as files; a secret given both ways is refused.
    fn read_secret_files(&mut self, matches: &ArgMatches) -> Result<(), String> {
        if let Some(path) = &self.database.url_file {
            let url_given = matches!(
                matches.value_source("database_url"),
                Some(ValueSource::EnvVariable | ValueSource::CommandLine)
            );
            if url_given {
                return Err(both_set("DATABASE_URL"));
            }
            self.database.url = read_secret_file("DATABASE_URL_FILE", path)?
                .expose()
                .to_owned();
        }
        self.kafka.security.read_secret_files()?;
        self.api.auth_token = secret_from_file(
            "HTTP_AUTH_TOKEN",
            self.api.auth_token.take(),
            self.api.auth_token_file.as_deref(),
        )?;
        Ok(())
    }

    /// Refuses settings that cannot work, before anything is connected. The database URL and
    /// librdkafka's properties are judged by the database driver and by librdkafka, at
    /// start-up.
    pub fn check(&self) -> Result<(), String> {
        self.kafka.security.check()?;
        self.api.check()
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl ApiSettings {
    /// Refuses HTTP settings that cannot work.
    pub fn check(&self) -> Result<(), String> {
        match &self.auth_token {
            Some(token) if token.expose().is_empty() => Err("HTTP_AUTH_TOKEN is empty".into()),
            None if self.metrics_require_auth => Err(
                "METRICS_REQUIRE_AUTH=true needs HTTP_AUTH_TOKEN or HTTP_AUTH_TOKEN_FILE".into(),
            ),
            _ => Ok(()),
        }
    }
}

impl BatchSettings {
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}

/// Options of `panopticon demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Number of simulated pods.
    #[arg(long, default_value_t = 20)]
    pub pods: u32,

    /// Interval between two samples of one pod (ms).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
}

/// Options of `panopticon simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Kafka bootstrap servers to produce to.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,

    /// Topic to produce to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "metrics.system")]
    pub topic: String,

    /// Number of simulated pods.
    #[arg(long, default_value_t = 20)]
    pub pods: u32,

    /// Interval between two samples of one pod (ms).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,

    /// Stop after producing this many metrics (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,

    #[command(flatten)]
    pub kafka_security: KafkaSecurity,
}

/// A span of time written as a whole number and a unit, `s`, `m`, `h` or `d`: `30s`, `7d`.
pub fn parse_duration_secs(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` must be a number and a unit, like 30s, 5m, 1h or 7d"))?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}` must end in a unit: s, m, h or d")),
    };
    if !(1..=100 * 366 * 86_400).contains(&number) {
        return Err(format!("`{text}` must be at least 1{unit}"));
    }
    Ok(number * unit_seconds)
}

/// A TimescaleDB policy age in seconds; `None` turns the policy off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyAge(pub Option<i64>);

fn parse_policy_age(text: &str) -> Result<PolicyAge, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(PolicyAge(None));
    }
    parse_duration_secs(text).map(|s| PolicyAge(Some(s)))
}

/// A chunk interval in seconds: from a minute (more chunks than that slows every query that
/// spans them) to a year.
fn parse_chunk_interval(text: &str) -> Result<i64, String> {
    let seconds = parse_duration_secs(text)?;
    if !(60..=366 * 86_400).contains(&seconds) {
        return Err(format!("`{}` must be between 1m and 366d", text.trim()));
    }
    Ok(seconds)
}

/// librdkafka properties given on the command line, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties(pub Vec<(String, String)>);

fn parse_properties(text: &str) -> Result<Properties, String> {
    let mut properties = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not of the form key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("`{pair}` has an empty key"));
        }
        properties.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(Properties(properties))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_pairs_and_reject_garbage() {
        assert_eq!(
            parse_properties("fetch.wait.max.ms=5, queued.min.messages = 1000").unwrap(),
            Properties(vec![
                ("fetch.wait.max.ms".into(), "5".into()),
                ("queued.min.messages".into(), "1000".into())
            ])
        );
        assert_eq!(parse_properties("").unwrap(), Properties::default());
        assert!(parse_properties("fetch.wait.max.ms").is_err());
        assert!(parse_properties("=5").is_err());
    }

    #[test]
    fn chunk_intervals_run_from_a_minute_to_a_year() {
        assert_eq!(parse_chunk_interval("1h"), Ok(3600));
        assert_eq!(parse_chunk_interval("1m"), Ok(60));
        assert_eq!(parse_chunk_interval("366d"), Ok(366 * 86_400));
        assert!(
            parse_chunk_interval("59s")
                .unwrap_err()
                .contains("between 1m and 366d")
        );
        assert!(parse_chunk_interval("367d").is_err());
        assert!(parse_chunk_interval("off").is_err());
    }
}
