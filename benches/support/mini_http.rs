//! A minimal keep-alive HTTP/1.1 client for the load generators of the webhook benchmarks.
//!
//! The load generator shares the machine's 2 cores with the roles it measures: a general client
//! (reqwest/hyper: a connection task, a dispatch channel, header maps per request) cost the
//! end-to-end benchmark about half a core at 12,000 requests/s. Here a request is one
//! pre-rendered buffer written to the socket and an answer is its status line, headers and a
//! `content-length` body read back on the same task.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to `127.0.0.1:<port>`.
pub struct MiniHttp {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server said `connection: close`: the next request needs a new connection.
    closing: bool,
}

impl MiniHttp {
    /// Connects with `TCP_NODELAY` (a request is one write; Nagle would hold the next one).
    pub async fn connect(port: u16) -> Option<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Self {
            stream,
            buf: Vec::with_capacity(4096),
            closing: false,
        })
    }

    /// Whether the server closes this connection after its last answer.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Writes `request` (a whole HTTP/1.1 request) and reads its answer; the answer's status,
    /// or `None` when the connection failed (the caller connects again).
    pub async fn request(&mut self, request: &[u8]) -> Option<u16> {
        self.stream.write_all(request).await.ok()?;
        self.buf.clear();
        let mut scanned = 0usize;
        let end = loop {
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
            // A header end split across reads is found from 3 bytes before the new data.
            let from = scanned.saturating_sub(3);
            if let Some(at) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                break from + at;
            }
            scanned = self.buf.len();
        };
        let head = std::str::from_utf8(&self.buf[..end]).ok()?;
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0usize;
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("connection") {
                self.closing = value.eq_ignore_ascii_case("close");
            }
        }
        while self.buf.len() < end + 4 + length {
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
        Some(status)
    }
}

/// Appends a `POST` of `body` (JSON) to `out`: the request line, `host`, `content-type`,
/// `content-length` and `extra_headers` (each `name: value`).
pub fn render_post(out: &mut Vec<u8>, path: &str, extra_headers: &[&str], body: &[u8]) {
    use std::io::Write;
    write!(
        out,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    )
    .expect("writing to a Vec");
    for header in extra_headers {
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}
