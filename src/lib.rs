//! A selective forwarding unit for WebRTC media. See README.md for the data path.
//!
//! Layers, outermost first, each knowing only the ones below it:
//! `transport` (sockets, admission) → `session` (wire protocol, one state machine per client)
//! → `room` (the model; ports for directory, catalog and observers) → `media` (workers,
//! forwarding). `store`, `audit` and `integrations` implement the room's ports; `app` wires
//! it all once at start-up. `turn` mints the TURN credentials handed to clients. `cluster`
//! (node links) sits beside `session`: it serves a room to another node, or relays one
//! from its owner, through the room and media layers.

mod app;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod integrations;
pub mod limits;
pub mod media;
pub mod room;
pub mod session;
mod store;
pub mod telemetry;
pub mod transport;
pub mod turn;

pub use app::{start, AppContext, ServerHandle};
