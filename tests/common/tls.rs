//! What the TLS and SASL tests need: certificates made by the `openssl` CLI (a CA, a server
//! certificate it signs for `localhost`, a client certificate, and a second CA that signed
//! none of them), and Apache Kafka with a TLS listener of its own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use rdkafka::config::ClientConfig;

use super::kafka::{ClusterOptions, KafkaCluster};
use super::{TestDatabase, harness};

/// Certificates in a temporary directory, removed on drop.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// A CA; a server certificate for `localhost` (no IP address: connecting by `127.0.0.1`
    /// is a host name mismatch); a client certificate for the user `panopticon`; another CA.
    pub fn make() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("test-certs-")
            .tempdir()
            .expect("temporary directory for certificates");
        let certs = Certs { dir };
        certs.ca("ca", "Panopticon Test CA");
        certs.ca("other-ca", "Somebody Else's CA");
        certs.signed(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        certs.signed("client", "panopticon", "extendedKeyUsage=clientAuth\n");
        std::fs::write(certs.path("not-pem.pem"), "this is no certificate\n").unwrap();
        certs
    }

    /// `ca.pem`, `ca.key`, `other-ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key`, `not-pem.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    fn ca(&self, name: &str, subject: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={subject}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn signed(&self, name: &str, common_name: &str, extensions: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), extensions).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={common_name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl (install the openssl package)");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Apache Kafka with listeners of its own for TLS clients (`SSL`, or `SASL_SSL` and
/// `SASL_PLAINTEXT` with SCRAM), bound to 127.0.0.1 and advertised as `localhost:<port>`, the
/// name the server certificate carries; its PLAINTEXT listener stays for the tests' own set-up
/// (topics, users, ACLs).
pub struct TlsBroker {
    /// `localhost:<port>` of the first listener.
    pub address: String,
    /// `localhost:<port>` of each listener, by name.
    pub addresses: BTreeMap<String, String>,
    pub cluster: KafkaCluster,
}

impl TlsBroker {
    /// Starts a one-node cluster whose `protocol` listener (`SSL` or `SASL_SSL`) presents the
    /// server certificate of `certs`; `extra` properties are added (`ssl.client.auth`, …).
    pub fn start(certs: &Certs, protocol: &str, extra: &[(&str, &str)]) -> TlsBroker {
        TlsBroker::start_listeners(certs, &[(protocol, protocol)], extra)
    }

    /// Starts a one-node cluster with a listener for each `(name, protocol)`, e.g.
    /// `("MTLS", "SSL")`: the TLS ones present the server certificate of `certs` and trust its
    /// CA, the SASL ones take SCRAM-SHA-256 and -512. Properties of one listener go in `extra`
    /// as `listener.name.<name>.…` (`listener.name.mtls.ssl.client.auth=required`).
    pub fn start_listeners(
        certs: &Certs,
        listeners: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> TlsBroker {
        let pem = |name: &str| {
            String::from_utf8(certs.read(name))
                .expect("PEM is text")
                .trim()
                .replace('\n', "\\n")
        };
        let ports: Vec<u16> = listeners.iter().map(|_| super::free_port()).collect();
        let bound: Vec<String> = listeners
            .iter()
            .zip(&ports)
            .map(|((name, _), port)| format!("{name}://127.0.0.1:{port}"))
            .collect();
        let advertised: Vec<String> = listeners
            .iter()
            .zip(&ports)
            .map(|((name, _), port)| format!("{name}://localhost:{port}"))
            .collect();
        let map: Vec<String> = listeners
            .iter()
            .map(|(name, protocol)| format!("{name}:{protocol}"))
            .collect();
        let mut properties: BTreeMap<String, String> = [
            (
                "listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{{port}},CONTROLLER://127.0.0.1:{{controller_port}},{}",
                    bound.join(",")
                ),
            ),
            (
                "advertised.listeners",
                format!("PLAINTEXT://127.0.0.1:{{port}},{}", advertised.join(",")),
            ),
            (
                "listener.security.protocol.map",
                format!("CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,{}", map.join(",")),
            ),
            // Kafka reads PEM in its properties; an unencrypted key only inline, not from a file.
            ("ssl.keystore.type", "PEM".to_owned()),
            ("ssl.keystore.certificate.chain", pem("server.pem")),
            ("ssl.keystore.key", pem("server.key")),
            ("ssl.truststore.type", "PEM".to_owned()),
            ("ssl.truststore.certificates", pem("ca.pem")),
            (
                "sasl.enabled.mechanisms",
                "SCRAM-SHA-256,SCRAM-SHA-512".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (name, protocol) in listeners {
            if protocol.starts_with("SASL_") {
                for mechanism in ["scram-sha-256", "scram-sha-512"] {
                    properties.insert(
                        format!(
                            "listener.name.{}.{mechanism}.sasl.jaas.config",
                            name.to_ascii_lowercase()
                        ),
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
                    );
                }
            }
        }
        properties.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let cluster = KafkaCluster::start(ClusterOptions {
            properties,
            heap: "384m".into(),
            ..ClusterOptions::default()
        })
        .unwrap_or_else(|e| panic!("cannot start Apache Kafka with TLS: {e:#}"));
        for port in &ports {
            harness::wait_for_port(*port, "kafka's TLS listener", || None)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let addresses: BTreeMap<String, String> = listeners
            .iter()
            .zip(&ports)
            .map(|((name, _), port)| (name.to_string(), format!("localhost:{port}")))
            .collect();
        TlsBroker {
            address: addresses[listeners[0].0].clone(),
            addresses,
            cluster,
        }
    }

    /// `localhost:<port>` of the listener `name`.
    pub fn address_of(&self, name: &str) -> &str {
        self.addresses
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// Creates `topics` (name, partitions) over the PLAINTEXT listener.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", self.cluster.bootstrap());
        super::create_topics_with(&client, topics).await;
    }
}

/// Certificates and a broker that the tests of one process share, made by the first call; the
/// broker is stopped and the certificates removed once the process is gone (statics are never
/// dropped).
pub struct SharedTls {
    pub certs: Certs,
    pub broker: TlsBroker,
}

impl SharedTls {
    /// [`super::service_env`] on the listener `listener`, speaking `protocol` (`ssl`,
    /// `sasl_ssl`, `sasl_plaintext`) and, over TLS, trusting the test CA.
    pub fn service_env(
        &self,
        listener: &str,
        protocol: &str,
        topic: &str,
        group: &str,
        db: &TestDatabase,
    ) -> HashMap<String, String> {
        let mut env = super::service_env(topic, group, db);
        env.insert(
            "KAFKA_BROKERS".into(),
            self.broker.address_of(listener).into(),
        );
        env.insert("KAFKA_SECURITY_PROTOCOL".into(), protocol.into());
        if protocol.ends_with("ssl") {
            env.insert(
                "KAFKA_SSL_CA_LOCATION".into(),
                self.certs.path("ca.pem").display().to_string(),
            );
        }
        env
    }

    /// The settings that show the test client's certificate and key (`User:CN=panopticon`).
    pub fn client_certificate(&self) -> [(String, String); 2] {
        [
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "client.pem"),
            ("KAFKA_SSL_KEY_LOCATION", "client.key"),
        ]
        .map(|(setting, file)| {
            (
                setting.to_owned(),
                self.certs.path(file).display().to_string(),
            )
        })
    }
}

/// The broker with these listeners and settings, started by the first call that asks for them:
/// the tests of one subject share a broker, and subjects that configure it differently (TLS,
/// SASL, ACLs) each get their own, although all run in one process.
pub fn shared(listeners: &[(&str, &str)], extra: &[(&str, &str)]) -> &'static SharedTls {
    static SHARED: Mutex<Vec<(String, &'static SharedTls)>> = Mutex::new(Vec::new());
    let key = format!("{listeners:?} {extra:?}");
    // Held while a broker starts, so that two tests asking for the same one start it once.
    let mut brokers = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, shared)) = brokers.iter().find(|(k, _)| *k == key) {
        return shared;
    }
    let certs = Certs::make();
    harness::spawn_watchdog(
        "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; rm -rf \"$2\"",
        &[
            std::process::id().to_string(),
            certs.dir.path().display().to_string(),
        ],
    )
    .expect("start a watchdog");
    let broker = TlsBroker::start_listeners(&certs, listeners, extra);
    let shared: &'static SharedTls = Box::leak(Box::new(SharedTls { certs, broker }));
    brokers.push((key, shared));
    shared
}

/// librdkafka settings for a test client of a TLS broker, trusting `ca`.
pub fn tls_client(address: &str, ca: &Path) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.to_string_lossy());
    config
}
