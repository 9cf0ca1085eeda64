//! Implementations of the room directory port ([`crate::room::ports::Directory`]), one
//! chosen at start-up: [`LocalDirectory`] on a single node, [`RedisDirectory`] across nodes
//! (REDIS_URL).

mod memory;
mod redis_directory;

pub use self::memory::LocalDirectory;
pub use self::redis_directory::{LinkEndpoint, RedisDirectory, HEARTBEAT};
