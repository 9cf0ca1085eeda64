//! Integrations with external systems. Each is optional and off unless configured.

pub mod django;
mod room_ports;
