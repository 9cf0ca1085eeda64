//! How bytes arrive: HTTP (health, status, demo page, dev token), and signaling over
//! WebSocket or WebTransport — both feed the same session driver.

pub mod admission;
pub mod drain;
pub mod http;
pub mod serve;
pub mod webtransport;
pub mod whip;
pub mod ws;
