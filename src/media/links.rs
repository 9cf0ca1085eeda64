//! Node links as the media plane sees them: one more relay destination beside the node's
//! workers. A producer's home worker feeds a link exactly as it feeds a mirroring worker (the
//! same [`Relay`] batches, one copy per wake-up), and mirrors whose producer lives on another
//! node send their keyframe requests, wants and unexports to the link that brought it. What a
//! link does with them (the wire, the other node) is the `cluster` layer's business.
//!
//! Links get indexes from [`LINK_BASE`] up, so a worker index and a link index never meet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use tokio::sync::mpsc;

use super::core::{MirrorSpec, Relay, RELAY_QUEUE};
use super::{MediaError, MediaRouter, ProducerId};

/// First index handed to a node link.
pub const LINK_BASE: usize = 1 << 16;

/// Where relay messages go: the node's workers by index, node links by theirs.
pub(crate) struct RelayPeers {
    workers: Vec<mpsc::Sender<Relay>>,
    links: RwLock<HashMap<usize, mpsc::Sender<Relay>>>,
    next_link: AtomicUsize,
}

impl RelayPeers {
    pub fn new(workers: Vec<mpsc::Sender<Relay>>) -> Self {
        RelayPeers {
            workers,
            links: RwLock::default(),
            next_link: AtomicUsize::new(LINK_BASE),
        }
    }

    /// Hand `relay` to worker or link `to` without waiting; a full inbox or a link that is
    /// gone gives it back.
    pub fn send(&self, to: usize, relay: Relay) -> Result<(), Relay> {
        if let Some(worker) = self.workers.get(to) {
            return worker.try_send(relay).map_err(|e| e.into_inner());
        }
        let links = self.links.read().unwrap_or_else(|p| p.into_inner());
        match links.get(&to) {
            Some(link) => link.try_send(relay).map_err(|e| e.into_inner()),
            None => Err(relay),
        }
    }
}

/// What the router keeps of a producer that lives on another node.
pub(crate) type RemoteProducers = HashMap<ProducerId, MirrorSpec>;

impl MediaRouter {
    /// A new node link: its index and the inbox where workers' messages for it arrive.
    pub fn attach_link(&self) -> (usize, mpsc::Receiver<Relay>) {
        let index = self.peers.next_link.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(RELAY_QUEUE);
        self.peers
            .links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(index, tx);
        (index, rx)
    }

    /// The link is gone: messages for it are dropped from now on, and the producers it
    /// brought are forgotten (their mirrors are closed by the link's `ProducerGone`s).
    pub fn detach_link(&self, index: usize) {
        self.peers
            .links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index);
        self.remote().retain(|_, spec| spec.home != index);
    }

    /// Apply `relay` on local worker `worker` now, through its command channel (never
    /// dropped, unlike [`Self::send_relay`]), as if another worker had sent it.
    pub async fn relay_now(&self, worker: usize, relay: Relay) -> Result<(), MediaError> {
        self.run(worker, move |core, now, egress| {
            core.on_relay(relay, now, egress)
        })
        .await
    }

    /// Relay side: whether link `link` still brings `producer`.
    pub fn brings(&self, link: usize, producer: ProducerId) -> bool {
        self.remote()
            .get(&producer)
            .is_some_and(|spec| spec.home == link)
    }

    /// Hand `relay` to a worker or a link; false when it could not take it now.
    pub fn send_relay(&self, to: usize, relay: Relay) -> bool {
        self.peers.send(to, relay).is_ok()
    }

    /// Owner side: what a node link needs to mirror `producer` of the room on worker `home`
    /// (payload parameters follow with the packets, as `codec` messages).
    pub async fn link_export_spec(
        &self,
        home: usize,
        producer: ProducerId,
    ) -> Result<MirrorSpec, MediaError> {
        self.run(home, move |core, _, _| core.export_spec(producer))
            .await?
    }

    /// Relay side: `spec.producer` lives on another node and reaches this one through link
    /// `spec.home`; consumers of it get a mirror fed by that link.
    pub fn add_remote_producer(&self, spec: MirrorSpec) {
        self.remote().insert(spec.producer, spec);
    }

    /// The producer `link` brought is gone (another link's registration of it stays).
    pub fn remove_remote_producer(&self, producer: ProducerId, link: usize) {
        let mut remote = self.remote();
        if remote.get(&producer).is_some_and(|spec| spec.home == link) {
            remote.remove(&producer);
        }
    }

    fn remote(&self) -> std::sync::MutexGuard<'_, RemoteProducers> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a consumer on `target` of a producer of another node: `target` mirrors it and
    /// the link is asked to feed that mirror. `false`: the producer is not a remote one.
    pub(super) async fn ensure_remote_mirror(
        &self,
        target: usize,
        producer: ProducerId,
    ) -> Result<bool, MediaError> {
        let Some(spec) = self.remote().get(&producer).cloned() else {
            return Ok(false);
        };
        let link = spec.home;
        let nonce = self
            .run(target, move |core, now, _| core.create_mirror(spec, now))
            .await?;
        let export = Relay::Export {
            producer,
            to: target,
            nonce,
        };
        if !self.send_relay(link, export) {
            return Err(MediaError::WorkerGone);
        }
        Ok(true)
    }
}
