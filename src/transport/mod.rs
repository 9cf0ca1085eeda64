//! How bytes arrive: HTTP (health, status, demo page, dev token), and signaling over
//! WebSocket or WebTransport — both feed the same session driver.

pub(crate) mod admission;
pub(crate) mod drain;
pub(crate) mod http;
pub(crate) mod serve;
pub mod webtransport;
pub(crate) mod whip;
pub(crate) mod ws;
