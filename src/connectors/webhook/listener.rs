//! The webhooks' HTTP/1 listener: the accept loop, the connection cap, the per-connection
//! deadlines for reading a request head and for idling between requests, and graceful shutdown.
//!
//! `axum::serve` sets none of these, so a peer that opens connections and sends nothing, or half
//! a request line, held a file descriptor (and a task) for as long as it liked. Here every
//! connection is always in one of three phases, each bounded:
//!
//! - **head**: from the accept (or from the first byte of a further request on a kept-alive
//!   connection) until hyper hands the parsed headers to the handler: at most
//!   `header_read_timeout`, then the connection is closed (`header_timeout`);
//! - **busy**: the handler runs; it reads the body within `body_read_timeout` (answered 408 and
//!   closed otherwise, `body_timeout`, see `server.rs`) and waits for Kafka at most `ack_timeout`;
//! - **idle**: a kept-alive connection after its answer, with no byte of a next request: at most
//!   `idle_timeout`, then closed (`idle_timeout`; normal for senders that keep connections open).
//!
//! At most `max_connections` connections are open at once. One over the cap is accepted and at
//! once answered 503 (best effort, without reading its request) and closed (`connection_cap`),
//! never left waiting in the kernel's accept queue. At shutdown the listener stops accepting,
//! idle connections close, requests being handled are finished and answered (the phases' deadlines
//! still apply), and [`serve`]'s task ends when every connection has closed.

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::metrics::metrics;
use crate::shutdown::Shutdown;

/// The connection-level limits of one webhook listener (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest time to receive a whole request head (request line and headers).
    pub header_read_timeout: Duration,
    /// Longest time to receive a whole request body once its head was read.
    pub body_read_timeout: Duration,
    /// Longest time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Most connections open at once; more are refused at once.
    pub max_connections: usize,
}

/// The `reason` label of connections closed by the listener for sitting in a phase too long.
const HEADER_TIMEOUT: &str = "header_timeout";
const IDLE_TIMEOUT: &str = "idle_timeout";
/// The `reason` label of connections refused over `max_connections`.
const CONNECTION_CAP: &str = "connection_cap";
/// The `reason` label of connections whose request body did not arrive in time (counted by the
/// handler, which owns the body).
pub const BODY_TIMEOUT: &str = "body_timeout";

/// Metric handles of one listener, resolved once.
#[derive(Clone)]
struct ConnectionMetrics {
    open: IntGauge,
    header_timeout: IntCounter,
    idle_timeout: IntCounter,
    refused: IntCounter,
}

impl ConnectionMetrics {
    fn new(role: &str) -> Self {
        let m = metrics();
        let closed = |reason| {
            m.webhook_connections_closed
                .with_label_values(&[role, reason])
        };
        Self {
            open: m.webhook_open_connections.with_label_values(&[role]),
            header_timeout: closed(HEADER_TIMEOUT),
            idle_timeout: closed(IDLE_TIMEOUT),
            refused: closed(CONNECTION_CAP),
        }
    }
}

/// Where one connection stands; see the module documentation.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head since then.
    Head(Instant),
    /// The handler runs.
    Busy,
    /// Answered; no byte of a next request since then.
    Idle(Instant),
}

/// The phase of one connection, moved by the reads of its socket and by its handler, watched by
/// its connection task.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().expect("phase lock") = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle connection they start the next request's head.
    fn received(&self) {
        let mut phase = self.phase.lock().expect("phase lock");
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// When the current phase runs out, and the reason to close then; `None` while busy.
    fn deadline(&self, limits: &HttpLimits) -> Option<(Instant, &'static str)> {
        match *self.phase.lock().expect("phase lock") {
            Phase::Head(since) => Some((since + limits.header_read_timeout, HEADER_TIMEOUT)),
            Phase::Idle(since) => Some((since + limits.idle_timeout, IDLE_TIMEOUT)),
            Phase::Busy => None,
        }
    }
}

/// A socket that reports arriving bytes to its connection's [`Activity`].
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `router` on `listen` under `limits` until `shutdown`; the task ends once every
/// connection has closed (in-flight requests are finished and answered first).
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    role: &'static str,
    limits: HttpLimits,
    retry_after_seconds: u64,
    shutdown: Shutdown,
) -> io::Result<(SocketAddr, tokio::task::JoinHandle<io::Result<()>>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(
        listener,
        router,
        role,
        limits,
        retry_after_seconds,
        shutdown,
    ));
    Ok((addr, task))
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    role: &'static str,
    limits: HttpLimits,
    retry_after_seconds: u64,
    shutdown: Shutdown,
) -> io::Result<()> {
    let m = ConnectionMetrics::new(role);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusal = refusal(retry_after_seconds);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: retrying at once would spin.
                tracing::error!(role, error = %e, "webhook listener cannot accept; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            m.refused.inc();
            // Best effort and never waiting: the socket's send buffer is empty, so this fits.
            let _ = stream.try_write(&refusal);
            drop(stream);
            continue;
        };
        let router = router.clone();
        let m = m.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            m.open.inc();
            connection(stream, router, &limits, &m, shutdown).await;
            m.open.dec();
            drop(slot);
        });
    }
    drop(listener);
    // Every connection task holds a slot until its connection has closed.
    let _all = slots
        .acquire_many(limits.max_connections as u32)
        .await
        .map_err(io::Error::other)?;
    Ok(())
}

/// Serves one connection until it ends, a phase deadline passes, or (after shutdown) its
/// last request has been answered.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: &HttpLimits,
    m: &ConnectionMetrics,
    shutdown: Shutdown,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let handler = TowerToHyperService::new(router);
    let phases = activity.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        phases.set(Phase::Busy);
        let answer = handler.call(request);
        let phases = phases.clone();
        async move {
            let response = answer.await;
            phases.set(Phase::Idle(Instant::now()));
            response
        }
    });
    let mut conn = pin!(http1::Builder::new().serve_connection(io, service));
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(limits);
        let expiry = deadline.map_or_else(|| Instant::now() + Duration::from_secs(3600), |d| d.0);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "webhook connection ended with an error");
                }
                return;
            }
            _ = shutdown.wait(), if !stopping => {
                stopping = true;
                // Idle connections close now; a request being handled is answered first.
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.changed.notified() => {}
            _ = tokio::time::sleep_until(expiry), if deadline.is_some() => {
                // The phase may have moved on since the deadline was read.
                if let Some((at, reason)) = activity.deadline(limits)
                    && Instant::now() >= at
                {
                    if reason == HEADER_TIMEOUT {
                        m.header_timeout.inc();
                    } else {
                        m.idle_timeout.inc();
                    }
                    tracing::debug!(reason, "closing a stalled webhook connection");
                    // Dropping the connection closes the socket.
                    return;
                }
            }
        }
    }
}

/// The whole answer to a connection over the cap.
fn refusal(retry_after_seconds: u64) -> Vec<u8> {
    let body = r#"{"error":"overloaded: too many connections"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {retry_after_seconds}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Errors of one incoming connection (not of the listener): skip it and accept the next.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_connections: 4,
        }
    }

    #[test]
    fn phases_have_their_own_deadlines() {
        let l = limits();
        let a = Activity::new();
        let (_, reason) = a.deadline(&l).unwrap();
        assert_eq!(reason, HEADER_TIMEOUT);
        a.set(Phase::Busy);
        assert!(a.deadline(&l).is_none());
        // Bytes of a body being read do not move a busy connection.
        a.received();
        assert!(a.deadline(&l).is_none());
        let answered = Instant::now() - Duration::from_secs(5);
        a.set(Phase::Idle(answered));
        assert_eq!(
            a.deadline(&l),
            Some((answered + l.idle_timeout, IDLE_TIMEOUT))
        );
        // The first byte of a next request starts its head deadline, from now.
        let before = Instant::now();
        a.received();
        let (at, reason) = a.deadline(&l).unwrap();
        assert_eq!(reason, HEADER_TIMEOUT);
        assert!(
            at >= before + l.header_read_timeout && at <= Instant::now() + l.header_read_timeout
        );
        // Further bytes of that head do not extend it.
        a.received();
        assert_eq!(a.deadline(&l).unwrap().0, at);
    }

    #[test]
    fn the_refusal_is_a_complete_503() {
        let text = String::from_utf8(refusal(7)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("retry-after: 7") && head.contains("connection: close"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
