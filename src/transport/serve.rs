//! The HTTP accept loop (instead of `axum::serve`, which has no header timeout): every TCP
//! connection counts against its client's MAX_CONNECTIONS_PER_IP from accept on, so requests
//! that never finish are capped too; request headers must arrive within READ_TIMEOUT_SECS
//! (also between keep-alive requests). WebSocket upgrades and `ConnectInfo` work as before;
//! an upgraded socket keeps its connection counted (see `ws_upgrade`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::AppContext;

/// Serve `app` on `listener` until `shutdown` resolves; then finish open requests (idle
/// keep-alive connections close at once) and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    ctx: Arc<AppContext>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let header_timeout = Duration::from_secs(ctx.settings.config.read_timeout_secs);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(open) = ctx.limits.open_connection(peer.ip()) else {
                    connections.spawn(refuse(stream));
                    continue;
                };
                let app = app.clone();
                let closing = closing_rx.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                        request.extensions_mut().insert(ConnectInfo(peer));
                        request.extensions_mut().insert(open.clone());
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.oneshot(request).await.unwrap_or_else(|e| match e {})) }
                    });
                    connection(stream, service, header_timeout, closing).await;
                });
            }
        }
    }
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
}

async fn connection<S>(
    stream: TcpStream,
    service: S,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        // Only ever set to true (or the loop is gone): either way, finish up.
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Over the per-client cap: one short 429 and close, without reading the request.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":"too many open connections from this client","code":"RATE_LIMITED","retryAfterMs":1000}"#;
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
