//! One HTTP/1.1 keep-alive client for both servers (ours and Cerbos), as in
//! `examples/load.rs`: prepared request bytes written to a TCP stream, the
//! reply's head parsed for its status and `content-length`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    chunk: Box<[u8]>,
    /// The last reply's body.
    pub body: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            chunk: vec![0u8; 64 * 1024].into_boxed_slice(),
            body: Vec::with_capacity(4096),
        }
    }

    /// Sends `req` and reads one reply into `self.body`; returns its status.
    pub async fn roundtrip(&mut self, req: &[u8]) -> u16 {
        self.stream.write_all(req).await.expect("write request");
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).expect("reply head is text");
                let status = head[9..12].parse().expect("status code");
                let len: usize = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().expect("content-length"))
                    })
                    .expect("the servers answer with content-length");
                let total = end + 4 + len;
                while self.buf.len() < total {
                    let n = self.stream.read(&mut self.chunk).await.expect("read reply");
                    assert!(n > 0, "server closed the connection");
                    self.buf.extend_from_slice(&self.chunk[..n]);
                }
                self.body.clear();
                self.body.extend_from_slice(&self.buf[end + 4..total]);
                self.buf.drain(..total);
                return status;
            }
            let n = self.stream.read(&mut self.chunk).await.expect("read reply");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}

/// A POST with a JSON body.
pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends every request once, over `connections` connections, and returns
/// each reply (status, body) in request order.
pub async fn answer_all(addr: SocketAddr, requests: Arc<Vec<Vec<u8>>>, connections: usize) -> Vec<(u16, Vec<u8>)> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut out = Vec::new();
            let mut i = c;
            while i < requests.len() {
                let status = conn.roundtrip(&requests[i]).await;
                out.push((i, status, std::mem::take(&mut conn.body)));
                i += connections;
            }
            out
        }));
    }
    let mut all: Vec<(u16, Vec<u8>)> = vec![(0, Vec::new()); requests.len()];
    for t in tasks {
        for (i, status, body) in t.await.expect("client task") {
            all[i] = (status, body);
        }
    }
    all
}

/// A closed-loop run.
pub struct Outcome {
    pub requests: usize,
    pub elapsed: Duration,
    /// Sorted, nanoseconds.
    pub latencies: Vec<u64>,
    pub non_200: usize,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// A percentile in microseconds.
    pub fn pct_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    }
}

/// Drives `requests` (round robin from a different start per connection)
/// over `connections` connections, each sending its next request as soon
/// as the last reply is in, for `duration`.
pub async fn drive(addr: SocketAddr, requests: Arc<Vec<Vec<u8>>>, connections: usize, duration: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut non_200 = 0;
            let mut i = c * 7919;
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                i = (i + 1) % requests.len();
                if conn.roundtrip(&requests[i]).await != 200 {
                    non_200 += 1;
                }
                latencies.push(sent.elapsed().as_nanos() as u64);
            }
            (latencies, non_200)
        }));
    }
    let mut all = Vec::new();
    let mut non_200 = 0;
    for t in tasks {
        let (l, n) = t.await.expect("client task");
        all.extend(l);
        non_200 += n;
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Outcome {
        requests: all.len(),
        elapsed,
        latencies: all,
        non_200,
    }
}
