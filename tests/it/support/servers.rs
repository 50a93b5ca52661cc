//! Redis and Postgres servers of a test's own, on free ports, which the test may flush, stop and start again.

use std::path::PathBuf;
use std::time::Duration;

use super::free_port;

/// A Redis of our own on a free port, which a test may flush, stop and start again.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "imagegen-redis-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let redis = PrivateRedis { port, dir };
        redis.up();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn up(&self) {
        let status = std::process::Command::new("redis-server")
            .args([
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.to_string_lossy(),
            ])
            .status()
            .expect("redis-server");
        assert!(status.success(), "redis-server did not start");
        for _ in 0..100 {
            if self.cli(&["ping"]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis did not come up");
    }

    pub fn down(&self) {
        let _ = self.cli(&["shutdown", "nosave"]);
    }

    pub fn flush(&self) {
        assert!(self.cli(&["flushall"]), "flushall");
    }

    fn cli(&self, args: &[&str]) -> bool {
        std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("ERR"))
            .unwrap_or(false)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Postgres server of our own (initdb in a temp dir, trust auth, a free port), which a test may stop and start.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (scripts/services.sh installs them)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "imagegen-pg-{port}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let pg = PrivatePostgres { port, dir, bin };
        pg.as_postgres(&format!("chown postgres {0}", pg.dir.display()), true);
        pg.as_postgres(
            &format!(
                "{}/initdb -D {}/data -A trust -U postgres >/dev/null",
                pg.bin.display(),
                pg.dir.display()
            ),
            false,
        );
        pg.up();
        pg
    }

    /// Runs a shell command as the postgres user (Postgres refuses to run as root), or as ourselves.
    fn as_postgres(&self, command: &str, as_self: bool) {
        let status = if as_self || !is_root() {
            std::process::Command::new("sh")
                .args(["-c", command])
                .status()
        } else {
            std::process::Command::new("su")
                .args(["postgres", "-c", command])
                .status()
        }
        .expect("shell");
        assert!(status.success(), "failed: {command}");
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn up(&self) {
        self.as_postgres(
            &format!(
                "{}/pg_ctl -D {1}/data -l {1}/log -w -o \"-c listen_addresses=127.0.0.1 -p {2} -k {1}\" start >/dev/null",
                self.bin.display(),
                self.dir.display(),
                self.port
            ),
            false,
        );
    }

    pub fn down(&self) {
        self.as_postgres(
            &format!(
                "{}/pg_ctl -D {}/data -m fast -w stop >/dev/null",
                self.bin.display(),
                self.dir.display()
            ),
            false,
        );
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!(
                    "{}/pg_ctl -D {}/data -m immediate stop",
                    self.bin.display(),
                    self.dir.display()
                ),
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
