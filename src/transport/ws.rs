//! WebSocket signaling: text frames are the protocol's JSON messages.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};

use crate::session::driver::{drive, Inbound, SignalingConnection};
use crate::session::protocol::{ErrorCode, OutboundEnvelope};
use crate::AppContext;

struct WsConnection(WebSocket);

impl WsConnection {
    /// A frame the WebSocket layer rejected: invalid UTF-8 in a text frame (RFC 6455 requires
    /// failing the connection, close code 1007) or a frame over the hard size cap (1009).
    /// The client gets the same coded error WebTransport sends, then the close frame.
    async fn refuse(&mut self, error: axum::Error) {
        let cause = error.into_inner();
        let (code, message, close_code, reason) = match cause.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Utf8(_)) => (
                ErrorCode::InvalidMessage,
                "frame is not valid UTF-8 JSON",
                1007,
                "invalid UTF-8",
            ),
            Some(tungstenite::Error::Capacity(_)) => (
                ErrorCode::MessageTooLarge,
                "frame exceeds the hard size cap; the connection is closed",
                1009,
                "frame too large",
            ),
            _ => return,
        };
        let reply = OutboundEnvelope::error(code, message, None, None).to_json();
        let frame = CloseFrame {
            code: close_code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            self.0.send(Message::Text(reply.into())).await?;
            self.0.send(Message::Close(Some(frame))).await
        })
        .await;
    }
}

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
                // The connection cannot continue (RFC 6455 §8.1, §7.4.1): say why, then close.
                Err(e) => {
                    tracing::debug!(error = %e, "websocket error");
                    self.refuse(e).await;
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
