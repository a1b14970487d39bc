//! What the TLS and SASL tests need: certificates made by the `openssl` CLI (a CA, a server
//! certificate it signs for `localhost`, a client certificate, and a second CA that signed
//! none of them), and a Kafka-protocol broker behind a real TLS terminator: tansu 0.6.0 cannot
//! take a certificate and a key at once, so `socat OPENSSL-LISTEN` terminates TLS in front of
//! it and the broker advertises socat's port.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rdkafka::config::ClientConfig;

use super::harness::{self, Guarded};

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

/// Starts `command`, its output discarded (stderr shown with `TEST_LOG`); it ends when
/// dropped, and by a watchdog should the test process die first.
fn guarded(name: &'static str, mut command: Command) -> Guarded {
    let log = if std::env::var_os("TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Guarded::spawn(name, &mut command).unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn wait_for_port(port: u16, what: &str) {
    harness::wait_for_port(port, what, || None).unwrap_or_else(|e| panic!("{e}"));
}

/// tansu behind socat: clients speak TLS to `localhost:<port>`, which the broker advertises.
pub struct TlsBroker {
    /// `localhost:<port>` of the TLS terminator.
    pub address: String,
    tls_port: u16,
    inner_port: u16,
    tansu: PathBuf,
    dir: tempfile::TempDir,
    broker: Option<Guarded>,
    _terminator: Guarded,
}

impl TlsBroker {
    /// Starts `tansu` with `storage` (a URL; `sqlite://…` is relative to a directory of the
    /// broker's own) and socat in front of it, with the server certificate of `certs`.
    pub fn start(certs: &Certs, tansu: &Path, storage: &str) -> TlsBroker {
        let dir = tempfile::Builder::new()
            .prefix("tls-broker-")
            .tempdir()
            .expect("temporary directory for the broker");
        let inner_port = super::free_port();
        let tls_port = super::free_port();
        let mut socat = Command::new("socat");
        socat.arg(format!(
            "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            certs.path("server.pem").display(),
            certs.path("server.key").display()
        ));
        socat.arg(format!("TCP:127.0.0.1:{inner_port}"));
        let terminator = guarded("socat", socat);
        let mut broker = TlsBroker {
            address: format!("localhost:{tls_port}"),
            tls_port,
            inner_port,
            tansu: tansu.to_owned(),
            dir,
            broker: None,
            _terminator: terminator,
        };
        broker.run_broker(storage, false);
        wait_for_port(tls_port, "socat");
        broker
    }

    /// Restarts the broker on the same storage, requiring SASL authentication or not.
    pub fn restart(&mut self, storage: &str, authentication: bool) {
        self.broker = None;
        self.run_broker(storage, authentication);
    }

    /// Runs the broker's own command line tool against its plaintext port (`user create …`,
    /// `topic create …`).
    pub fn tool(&self, args: &[&str]) {
        let broker = format!("tcp://127.0.0.1:{}", self.inner_port);
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--broker", &broker]);
        let output = Command::new(&self.tansu)
            .args(&full)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run {} {full:?}: {e}", self.tansu.display()));
        assert!(
            output.status.success(),
            "tansu {full:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn run_broker(&mut self, storage: &str, authentication: bool) {
        let mut tansu = Command::new(&self.tansu);
        tansu
            .args(harness::tansu_args(
                self.inner_port,
                &format!("localhost:{}", self.tls_port),
                storage,
            ))
            .current_dir(self.dir.path());
        if authentication {
            tansu.arg("--authentication");
        }
        self.broker = Some(guarded("tansu", tansu));
        wait_for_port(self.inner_port, "tansu");
    }
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
