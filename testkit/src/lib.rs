//! What the SFU's tests, benches and load runner share, so that each exists once: a str0m
//! client peer ([`peer`]), a WebSocket/WebTransport signaling client ([`signal`], framing in
//! [`frame`]), HS256 token minting ([`token`]), synthetic media ([`payload`]), receive
//! measurement ([`measure`], [`histogram`]) and process helpers ([`process`]).
//!
//! Nothing here depends on the server crate: clients meet it only on the wire.

pub mod frame;
pub mod histogram;
pub mod measure;
pub mod payload;
pub mod peer;
pub mod process;
pub mod shaper;
pub mod signal;
pub mod source;
pub mod token;
pub mod wtmedia;

pub use payload::{
    synthetic_is_keyframe, synthetic_payload, synthetic_picture_id, synthetic_tl0, LAYERS,
};
pub use peer::{
    negotiate_subscriber, InboundLoss, Peer, PeerOptions, PeerState, Publish, RawReceived, Received,
};
pub use process::{free_port, scratch_dir, spawn_server_binary, wait_until, ServerProcess};
pub use signal::{error_code, ok, SignalClient, Transport};
pub use token::{mint, token_for, Claims, Grants, SECRET};
