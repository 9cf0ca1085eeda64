//! WebSocket signaling: text frames are the protocol's JSON messages.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};

use crate::session::driver::{drive, Inbound, SignalingConnection};
use crate::AppContext;

struct WsConnection(WebSocket);

impl SignalingConnection for WsConnection {
    async fn recv(&mut self) -> Option<Inbound> {
        loop {
            return match self.0.recv().await? {
                Ok(Message::Text(text)) => Some(Inbound::Text(text.to_string())),
                Ok(Message::Binary(_)) => Some(Inbound::Invalid(
                    "binary frames are not supported; send JSON text",
                )),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => None,
                // Includes frames over the hard size cap: the connection cannot continue.
                Err(e) => {
                    tracing::debug!(error = %e, "websocket error");
                    None
                }
            };
        }
    }

    async fn send(&mut self, text: Arc<str>) -> bool {
        self.0
            .send(Message::Text(text.as_ref().into()))
            .await
            .is_ok()
    }

    fn kind(&self) -> &'static str {
        "websocket"
    }

    async fn close(&mut self, reason: &'static str) {
        // 1008: policy violation.
        let frame = CloseFrame {
            code: 1008,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.0.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

pub async fn serve(ctx: Arc<AppContext>, socket: WebSocket) {
    drive(ctx, WsConnection(socket)).await;
}
