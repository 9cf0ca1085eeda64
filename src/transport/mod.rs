//! How bytes arrive: HTTP (health, status, demo page, dev token), and signaling over
//! WebSocket or WebTransport — both feed the same session driver.

pub mod http;
pub mod webtransport;
pub mod whip;
pub mod ws;
