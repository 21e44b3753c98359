//! Test helper: the real `roleplay sim-server` binary on a free loopback port, killed when the
//! guard is dropped. Reached as `crate::common::simserver`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SimServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub addr_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SimServer {
    /// Start a server with these extra flags; waits (at most 20 s) until it has written its address.
    pub fn start(args: &[&str]) -> SimServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = dir.path().join("addr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_roleplay"))
            .args(["sim-server", "--host", "127.0.0.1", "--port", "0", "--addr-file"])
            .arg(&addr_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start roleplay sim-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && !s.is_empty()
            {
                break s;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("sim-server exited with {status} before listening: {err}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sim-server did not write its address within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        SimServer {
            child,
            url,
            addr_file,
            _dir: dir,
        }
    }

    /// The OpenAI-compatible API root, for `base_url`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `limit`) for the server to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `GET /stats`, over a bare HTTP/1.0 exchange so tests need no HTTP client of their own.
    pub async fn stats(&self) -> serde_json::Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = self.url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(host)
            .await
            .expect("connect to the sim-server");
        s.write_all(format!("GET /stats HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .expect("stats within 10 s")
            .expect("read");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        serde_json::from_str(body).expect("stats JSON")
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
