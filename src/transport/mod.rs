//! How bytes arrive: HTTP (health, status, demo page, dev token) and WebSocket signaling.

pub mod http;
pub mod ws;
