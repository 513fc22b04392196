//! The contract of the benchmarks' load-generator client (`benches/support/mini_http.rs`): an
//! answer split anywhere across reads is read whole (status, headers, `content-length` body),
//! keep-alive answers leave the connection usable, `connection: close` is reported, and a peer
//! that closes mid-answer is a failure, never a status. Otherwise the benchmarks would count
//! events they never saw answered. No Kafka needed.

#[path = "../benches/support/mini_http.rs"]
mod mini_http;

use std::time::Duration;

use mini_http::{MiniHttp, render_post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads one request of `len` bytes from `stream`, then writes `chunks` with a pause between
/// them (so each arrives in its own read).
async fn answer(stream: &mut tokio::net::TcpStream, len: usize, chunks: &[&[u8]]) -> Vec<u8> {
    let mut request = vec![0u8; len];
    stream.read_exact(&mut request).await.unwrap();
    for chunk in chunks {
        stream.write_all(chunk).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    request
}

/// A missed header end or body would wait for bytes that never come: fail instead of hanging.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("the answer was read within 5 s")
}

#[tokio::test]
async fn answers_split_across_reads_are_read_whole_and_keep_alive_is_kept() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut request = Vec::new();
    render_post(
        &mut request,
        "/webhooks/pendo",
        &["authorization: Bearer s"],
        br#"{"a":1}"#,
    );
    let len = request.len();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // Split inside a header name, inside the blank line, and inside the body.
        let first = answer(
            &mut s,
            len,
            &[
                b"HTTP/1.1 200 OK\r\ncontent-le",
                b"ngth: 11\r\n\r",
                b"\n{\"ok\":",
                b"true}",
            ],
        )
        .await;
        // The second answer comes in one piece and closes the connection.
        answer(
            &mut s,
            len,
            &[b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 0\r\n\r\n"],
        )
        .await;
        first
    });

    let mut http = MiniHttp::connect(port).await.unwrap();
    assert_eq!(within(http.request(&request)).await, Some(200));
    assert!(!http.is_closing());
    assert_eq!(within(http.request(&request)).await, Some(503));
    assert!(http.is_closing());

    let seen = String::from_utf8(server.await.unwrap()).unwrap();
    assert!(
        seen.starts_with("POST /webhooks/pendo HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("\r\ncontent-length: 7\r\n"), "{seen}");
    assert!(seen.contains("\r\nauthorization: Bearer s\r\n"), "{seen}");
    assert!(seen.ends_with("\r\n\r\n{\"a\":1}"), "{seen}");
}

#[tokio::test]
async fn a_peer_closing_mid_answer_is_a_failure_not_a_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut request = Vec::new();
    render_post(&mut request, "/", &[], b"{}");
    let len = request.len();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // Headers promise 10 body bytes; 3 come, then the connection closes.
        answer(
            &mut s,
            len,
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"],
        )
        .await;
    });
    let mut http = MiniHttp::connect(port).await.unwrap();
    assert_eq!(within(http.request(&request)).await, None);
    server.await.unwrap();
}
