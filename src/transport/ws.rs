//! WebSocket signaling: shuttles text frames between the socket and a [`Session`].

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::room::SessionSink;
use crate::session::Session;
use crate::AppContext;

/// Outbound messages a session may have queued before we consider the client stuck.
const OUTBOUND_QUEUE: usize = 1024;

pub async fn serve(ctx: Arc<AppContext>, socket: WebSocket) {
    let connection_id = Uuid::new_v4();
    let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
    let mut session = Session::new(ctx, SessionSink::new(connection_id, tx));
    let (mut sink, mut stream) = socket.split();
    tracing::debug!(connection = %connection_id, "websocket connected");
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => session.on_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => session.on_binary(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    // Includes frames over the hard size cap: the connection cannot continue.
                    tracing::debug!(connection = %connection_id, error = %e, "websocket error");
                    break;
                }
            },
            Some(out) = rx.recv() => {
                if sink.send(Message::Text(out.to_json().into())).await.is_err() {
                    break;
                }
            }
        }
        // Flush whatever the request produced before reading the next frame.
        while let Ok(out) = rx.try_recv() {
            if sink
                .send(Message::Text(out.to_json().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    }
    session.on_close().await;
    tracing::debug!(connection = %connection_id, "websocket closed");
}
