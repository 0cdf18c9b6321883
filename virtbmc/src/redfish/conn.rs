//! The accept loop and the HTTP/1.1 connections of one Redfish port. Every bound is here:
//! handshakes and request heads that take too long end the connection, heads and bodies
//! have a size limit, and a port holds a bounded number of connections. HTTPS always; plain
//! HTTP on the same port only when asked for, told apart by the first byte a client sends
//! (a TLS connection opens with a handshake record, 0x16; an HTTP request with a method).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::Service;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// For a request head to arrive, counted from its first byte or, between requests on a
/// kept-alive connection, from the end of the last answer (hyper's header read timeout).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Request head buffer (hyper's minimum is 8 KiB) and header count.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// Connections per port: more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// A TLS record of type handshake: how every TLS connection begins.
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    plain_http: bool,
    service: Arc<Service>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, tls.clone(), plain_http, service.clone()));
                }
                Err(e) => {
                    log::warn!("redfish: bmc={} accept failed: {e}", service.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    plain_http: bool,
    service: Arc<Service>,
) {
    if plain_http {
        let mut first = [0u8; 1];
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
            Ok(Ok(1..)) if first[0] != TLS_HANDSHAKE => return http(stream, service).await,
            Ok(Ok(1..)) => {}
            _ => return,
        }
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(s)) => {
            service.metrics.handshakes_ok.fetch_add(1, Relaxed);
            s
        }
        Ok(Err(e)) => {
            service.metrics.handshakes_failed.fetch_add(1, Relaxed);
            log::debug!("redfish: bmc={} TLS handshake failed: {e}", service.name);
            return;
        }
        Err(_) => {
            service.metrics.handshakes_failed.fetch_add(1, Relaxed);
            return;
        }
    };
    http(stream, service).await;
}

/// HTTP/1.1 with keep-alive over `stream`, until the client or a bound ends it.
async fn http<S>(stream: S, service: Arc<Service>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(super::routes::handle(&service, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        log::debug!("redfish: connection ended: {e}");
    }
}
