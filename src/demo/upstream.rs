//! A stand-in upstream: a minimal HTTP/1.1 server on 127.0.0.1 answering every request as the
//! script says at that moment. Keep-alive is honoured so the client's connection pool behaves
//! as it would against a real API.

use super::script::Script;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read; the client only sends small GETs.
const MAX_HEAD: usize = 16 * 1024;

/// Starts `service` on an ephemeral loopback port; it runs until the runtime stops.
pub async fn start(service: &'static str, script: Script, started: Instant) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, service, script, started));
        }
    });
    Ok(addr)
}

async fn connection(mut stream: TcpStream, service: &'static str, script: Script, started: Instant) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read one request head (GET requests carry no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let reply = script.reply(service, elapsed);
        tokio::time::sleep(Duration::from_millis(reply.delay_ms)).await;
        let body = format!(
            "{{\"service\":\"{service}\",\"path\":{path:?},\"status\":{},\"served_after_ms\":{}}}",
            reply.status, reply.delay_ms
        );
        let reason = if reply.status < 400 { "OK" } else { "Error" };
        let response = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            reply.status,
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
