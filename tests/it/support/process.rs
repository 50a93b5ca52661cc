//! A child process of the real `imagegen` binary, with its output kept, and free ports for it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const BIN: &str = env!("CARGO_BIN_EXE_imagegen");
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process whose stdout/stderr lines are kept (and echoed with TEST_LOG).
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    addr: watch::Receiver<Option<String>>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> Proc {
        Self::spawn_in(None, name, args, env)
    }

    /// Like `spawn`, in the working directory `dir`.
    pub fn spawn_in(
        dir: Option<&std::path::Path>,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Proc {
        let mut cmd = Command::new(BIN);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn imagegen");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let echo = std::env::var("TEST_LOG").is_ok();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let tx = tx.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if echo {
                        eprintln!("[{name}] {line}");
                    }
                    if tx.borrow().is_none()
                        && line.contains("listening")
                        && !line.contains("metrics listening")
                        && let Some(addr) = find_addr(&line)
                    {
                        let _ = tx.send(Some(addr));
                    }
                    lines.lock().expect("log lock").push(line);
                }
            });
        }
        Proc {
            child,
            lines,
            addr: rx,
            name: name.to_owned(),
        }
    }

    /// The `127.0.0.1:PORT` the process said it listens on.
    pub async fn listening_addr(&mut self) -> String {
        let found = {
            let wait = self.addr.wait_for(Option::is_some);
            match tokio::time::timeout(START_TIMEOUT, wait).await {
                Ok(Ok(addr)) => addr.clone(),
                _ => None,
            }
        };
        found.unwrap_or_else(|| {
            panic!(
                "{} did not report a listening address; output:\n{}",
                self.name,
                self.output()
            )
        })
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running child").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit within {within:?}; output:\n{}",
                    self.name,
                    self.output()
                )
            })
            .expect("wait")
    }
}

fn find_addr(line: &str) -> Option<String> {
    let start = line.find("127.0.0.1:")?;
    let rest = &line[start + "127.0.0.1:".len()..];
    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!port.is_empty()).then(|| format!("127.0.0.1:{port}"))
}

/// A port nobody listens on (for a dependency that is down).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
