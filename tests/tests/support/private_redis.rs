//! A private `redis-server` for tests that stop or restart Redis: its own free port and directory, with
//! the append-only file on, started and stopped by its process id (never the machine's shared Redis).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` this test started.
pub struct PrivateRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// TLS only, with this password (`start_tls`).
    tls_password: Option<String>,
}

impl PrivateRedis {
    /// Starts one with `appendonly yes` (every write fsynced) on a free port, and waits until it answers.
    pub async fn start() -> PrivateRedis {
        Self::start_with(None).await
    }

    /// Starts one that takes only TLS connections (a certificate signed by a CA of its own, made with
    /// `openssl`: [`PrivateRedis::ca_file`]) and the password `password`.
    pub async fn start_tls(password: &str) -> PrivateRedis {
        Self::start_with(Some(password.to_owned())).await
    }

    async fn start_with(tls_password: Option<String>) -> PrivateRedis {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut redis = PrivateRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls_password,
        };
        if redis.tls_password.is_some() {
            redis.make_certificates();
        }
        redis.run().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://:<password>@127.0.0.1:<port>` for a TLS one.
    pub fn url(&self) -> String {
        match &self.tls_password {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(password) => format!("rediss://:{password}@127.0.0.1:{}", self.port),
        }
    }

    /// The PEM certificate of the CA that signed a TLS one's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn make_certificates(&self) {
        let dir = self.dir.path();
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=comfyume test CA",
                "-days",
                "2",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "redis.key",
                "-out",
                "redis.csr",
                "-subj",
                "/CN=localhost",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "redis.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "redis.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl is installed (.ci/install-test-deps installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
    }

    /// Its data directory (the append-only file lives there).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn run(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.tls_password {
            None => command.args(["--port", &self.port.to_string()]),
            Some(password) => {
                let dir = self.dir.path();
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(dir.join("redis.crt"))
                    .arg("--tls-key-file")
                    .arg(dir.join("redis.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.join("ca.crt"))
                    .args(["--tls-auth-clients", "no", "--requirepass", password])
            }
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            if self.answers().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn answers(&self) -> bool {
        let mut options = comfyume_core::RedisOptions::default();
        if self.tls_password.is_some() {
            options = options.with_ca_file(self.ca_file());
        }
        comfyume_core::RedisStore::connect(&self.url(), options)
            .await
            .is_ok()
    }

    /// Kills it like a crash (SIGKILL, by its process id) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (it reloads its append-only file).
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
