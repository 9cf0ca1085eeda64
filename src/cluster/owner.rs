//! The owner's end of a node link: a relay node asked for one of our rooms. We tell it the
//! room and what happens in it, feed it the producers it exports, and pass its keyframe
//! requests and layer wants to the room's worker as a mirroring worker's would be.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use str0m::media::Pt;
use tokio::sync::mpsc;
use wtransport::{Connection, SendStream, VarInt};

use super::wire::{self, Control, LinkParticipant, LinkProducer, LinkRoom};
use super::Cluster;
use crate::media::core::{ProducerPacket, Relay};
use crate::media::ortc::kind_str;
use crate::media::simulcast::MAX_LAYERS;
use crate::media::ProducerId;
use crate::room::{Notice, Notifier, ParticipantView, ProducerView, Watch};
use crate::session::room_error_code;

/// A relay node must say hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Every export from a link is the same mirror as far as the room's worker is concerned.
const LINK_NONCE: u64 = 1;
/// How long a write to the relay may wait for it to read.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The room's notices, handed to the link's task (a notifier must not block).
struct ToLink(mpsc::UnboundedSender<Notice>);

impl Notifier for ToLink {
    fn notify(&self, notice: Notice) {
        let _ = self.0.send(notice);
    }
}

/// Our end of one link, while it lasts.
struct OwnerLink {
    cluster: Arc<Cluster>,
    connection: Connection,
    control: SendStream,
    /// Our index on the media plane.
    link: usize,
    room_id: String,
    worker: usize,
    exported: HashSet<ProducerId>,
    /// The room's producers the relay was told of: the only ones it may ask for.
    announced: HashSet<ProducerId>,
    /// (producer, payload type) whose parameters the relay was told.
    codecs_sent: HashSet<(ProducerId, Pt)>,
    /// Packets too large for a datagram go here, length-prefixed.
    packet_stream: Option<SendStream>,
    datagram: Vec<u8>,
}

impl Cluster {
    /// Serve one node link on an accepted WebTransport session.
    pub async fn serve_link(self: Arc<Self>, connection: Connection) {
        let Ok(Ok((mut control, mut recv))) =
            tokio::time::timeout(HELLO_TIMEOUT, connection.accept_bi()).await
        else {
            connection.close(VarInt::from_u32(1), b"expected a control stream");
            return;
        };
        let hello = tokio::time::timeout(
            HELLO_TIMEOUT,
            wire::read_control_within(&mut recv, wire::MAX_HELLO_BYTES),
        )
        .await;
        let (room_id, node) = match hello {
            Ok(Ok(Control::Hello {
                token,
                room_id,
                node_id,
            })) => match self.keys.verify(&token, &room_id) {
                Ok(node) if node == node_id => (room_id, node),
                Ok(_) => {
                    refuse(
                        &mut control,
                        "NOT_AUTHENTICATED",
                        "token names another node",
                    )
                    .await;
                    return;
                }
                Err(message) => {
                    refuse(&mut control, "NOT_AUTHENTICATED", &message).await;
                    return;
                }
            },
            _ => {
                refuse(
                    &mut control,
                    "INVALID_MESSAGE",
                    "the first message must be a hello",
                )
                .await;
                return;
            }
        };
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let watch = match self
            .rooms
            .watch(&room_id, Arc::new(ToLink(notices_tx)))
            .await
        {
            Ok(watch) => watch,
            Err(e) => {
                let code = serde_json::to_value(room_error_code(e.kind))
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "INTERNAL_ERROR".into());
                refuse(&mut control, &code, &e.message).await;
                return;
            }
        };
        let (link, inbox) = self.media.attach_link();
        self.counters.owner_links.fetch_add(1, Ordering::Relaxed);
        tracing::info!(room = %room_id, relay = %node, "node link opened");
        let watch_id = watch.watch_id;
        let mut this = OwnerLink {
            cluster: self.clone(),
            connection,
            control,
            link,
            room_id: room_id.clone(),
            worker: watch.worker,
            exported: HashSet::new(),
            announced: HashSet::new(),
            codecs_sent: HashSet::new(),
            packet_stream: None,
            datagram: Vec::with_capacity(1500),
        };
        let reason = this.run(watch, recv, notices, inbox).await;
        tracing::info!(room = %room_id, relay = %node, reason, "node link closed");
        for producer in std::mem::take(&mut this.exported) {
            let unexport = Relay::Unexport {
                producer,
                from: link,
                nonce: LINK_NONCE,
            };
            // Awaited, not queued: a lost one would feed a dead link for good.
            let _ = self.media.relay_now(this.worker, unexport).await;
        }
        self.media.detach_link(link);
        self.rooms.unwatch(&room_id, watch_id).await;
        this.connection
            .close(VarInt::from_u32(0), reason.as_bytes());
        self.counters.owner_links.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn refuse(control: &mut SendStream, code: &str, message: &str) {
    let refused = Control::Refused {
        code: code.to_string(),
        message: message.to_string(),
    };
    let _ = control.write_all(&wire::encode_control(&refused)).await;
    let _ = control.finish().await;
}

impl OwnerLink {
    /// Until the relay leaves, the room closes, or the connection drops; returns why.
    async fn run(
        &mut self,
        watch: Watch,
        recv: wtransport::RecvStream,
        mut notices: mpsc::UnboundedReceiver<Notice>,
        mut inbox: mpsc::Receiver<Relay>,
    ) -> &'static str {
        let watch_id = watch.watch_id;
        let mut participants = Vec::with_capacity(watch.participants.len());
        for view in &watch.participants {
            participants.push(self.participant(view).await);
        }
        let welcome = Control::Welcome {
            room: LinkRoom {
                room_id: watch.definition.room_id.clone(),
                name: watch.definition.name.clone(),
                description: watch.definition.description.clone(),
                max_participants: watch.definition.max_participants,
            },
            participants,
        };
        if !self.send(&welcome).await {
            return "relay gone";
        }
        let mut controls = spawn_control_reader(recv);
        loop {
            tokio::select! {
                control = controls.recv() => match control {
                    Some(Ok(Control::LocalJoined { participant })) => {
                        let view = participant.view(Vec::new());
                        self.cluster.rooms.relay_participant_joined(&self.room_id, watch_id, view);
                    }
                    Some(Ok(Control::LocalLeft { participant_id })) => {
                        self.cluster
                            .rooms
                            .relay_participant_left(&self.room_id, watch_id, &participant_id)
                            .await;
                    }
                    Some(Ok(control)) => self.on_control(control).await,
                    Some(Err(e)) => {
                        tracing::debug!(room = %self.room_id, error = %e, "node link control stream");
                        return "control stream ended";
                    }
                    None => return "control stream ended",
                },
                notice = notices.recv() => {
                    let Some(notice) = notice else { return "room gone" };
                    if matches!(notice, Notice::RoomClosed { .. }) {
                        let _ = self.send(&Control::RoomClosed).await;
                        return "room closed";
                    }
                    if let Some(control) = self.control_for(notice).await {
                        if !self.send(&control).await {
                            return "relay gone";
                        }
                    }
                }
                relay = inbox.recv() => match relay {
                    Some(Relay::Packets(packets)) => {
                        if !self.send_packets(&packets).await {
                            return "relay gone";
                        }
                    }
                    Some(Relay::ProducerGone { producer }) => {
                        self.exported.remove(&producer);
                        if !self.send(&Control::ProducerGone { producer_id: producer }).await {
                            return "relay gone";
                        }
                    }
                    Some(_) => {}
                    None => return "media plane gone",
                },
                _ = self.connection.closed() => return "connection closed",
            }
        }
    }

    /// Something the relay asked for, passed to the room's worker as a mirror's would be.
    async fn on_control(&mut self, control: Control) {
        let (from, nonce) = (self.link, LINK_NONCE);
        let asked_for = match &control {
            Control::Export { producer_id }
            | Control::Unexport { producer_id }
            | Control::Keyframe { producer_id, .. }
            | Control::Wants { producer_id, .. } => *producer_id,
            _ => return,
        };
        // A link is for one room: another room's producers are not its to take.
        if !self.announced.contains(&asked_for) {
            tracing::debug!(room = %self.room_id, producer = %asked_for, "node link asked for a producer not in its room");
            return;
        }
        let relay = match control {
            Control::Export { producer_id } => {
                self.exported.insert(producer_id);
                Relay::Export {
                    producer: producer_id,
                    to: from,
                    nonce,
                }
            }
            Control::Unexport { producer_id } => {
                self.exported.remove(&producer_id);
                Relay::Unexport {
                    producer: producer_id,
                    from,
                    nonce,
                }
            }
            Control::Keyframe { producer_id, layer } => Relay::Keyframe {
                producer: producer_id,
                layer,
            },
            Control::Wants {
                producer_id,
                layers,
            } => {
                let mut wanted = [false; MAX_LAYERS];
                for (w, l) in wanted.iter_mut().zip(layers) {
                    *w = l;
                }
                Relay::Wants {
                    producer: producer_id,
                    from,
                    layers: wanted,
                }
            }
            // Owner-bound messages only; anything else from a relay is ignored.
            _ => return,
        };
        match relay {
            // Exports change what the worker feeds the link: they must not be lost.
            Relay::Export { .. } | Relay::Unexport { .. } => {
                let _ = self.cluster.media.relay_now(self.worker, relay).await;
            }
            // Keyframe requests and wants are repeated by the relay's mirrors when they matter.
            _ => {
                self.cluster.media.send_relay(self.worker, relay);
            }
        }
    }

    /// The link's message for a room notice, if the relay needs it.
    async fn control_for(&mut self, notice: Notice) -> Option<Control> {
        Some(match notice {
            Notice::ParticipantJoined(view) => Control::ParticipantJoined {
                participant: self.participant(&view).await,
            },
            Notice::ParticipantLeft { participant_id } => {
                Control::ParticipantLeft { participant_id }
            }
            Notice::NewProducer(view) => Control::ProducerAdded {
                producer: self.producer(&view).await?,
            },
            Notice::ProducerClosed {
                producer_id,
                participant_id,
            } => {
                self.announced.remove(&producer_id);
                Control::ProducerClosed {
                    producer_id,
                    participant_id,
                }
            }
            Notice::ProducerPaused {
                producer_id,
                participant_id,
                paused,
            } => Control::ProducerPaused {
                producer_id,
                participant_id,
                paused,
            },
            _ => return None,
        })
    }

    async fn participant(&mut self, view: &ParticipantView) -> LinkParticipant {
        let mut producers = Vec::with_capacity(view.producers.len());
        for p in &view.producers {
            if let Some(p) = self.producer(p).await {
                producers.push(p);
            }
        }
        LinkParticipant {
            participant_id: view.participant_id.clone(),
            user_id: view.user_id.clone(),
            display_name: view.display_name.clone(),
            producers,
        }
    }

    /// A producer with what the relay needs to mirror it (None: it is gone already).
    async fn producer(&mut self, view: &ProducerView) -> Option<LinkProducer> {
        let spec = self
            .cluster
            .media
            .link_export_spec(self.worker, view.producer_id)
            .await
            .ok()?;
        self.announced.insert(view.producer_id);
        Some(LinkProducer {
            producer_id: view.producer_id,
            participant_id: view.participant_id.clone(),
            kind: kind_str(view.kind).to_string(),
            layers: view.layers.clone(),
            mid: spec.mid.to_string(),
            rids: spec.rids.iter().map(|r| r.map(|r| r.to_string())).collect(),
            mime_type: spec.mime_type,
        })
    }

    /// A relay that does not read its control stream for [`WRITE_TIMEOUT`] is dropped: the
    /// link's task must keep serving the room's worker, and the notices must not pile up.
    async fn send(&mut self, control: &Control) -> bool {
        let bytes = wire::encode_control(control);
        let write = self.control.write_all(&bytes);
        matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
    }

    /// One wake-up's packets of the producers this link exports.
    async fn send_packets(&mut self, packets: &[ProducerPacket]) -> bool {
        let cluster = self.cluster.clone();
        let counters = &cluster.counters;
        for packet in packets {
            if let Some(params) = packet.params {
                if self.codecs_sent.insert((packet.producer, packet.pt)) {
                    let codec = Control::Codec {
                        producer_id: packet.producer,
                        params,
                    };
                    if !self.send(&codec).await {
                        return false;
                    }
                }
            }
            wire::encode_packet(packet, &mut self.datagram);
            let fits = self
                .connection
                .max_datagram_size()
                .is_some_and(|max| self.datagram.len() <= max);
            if fits && self.connection.send_datagram(&self.datagram).is_ok() {
                counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.oversize_out.fetch_add(1, Ordering::Relaxed);
            if !self.send_on_stream().await {
                return false;
            }
        }
        true
    }

    /// The packet in `self.datagram`, on the link's packet stream (opened on first use).
    async fn send_on_stream(&mut self) -> bool {
        if self.packet_stream.is_none() {
            let opened = match self.connection.open_uni().await {
                Ok(opening) => opening.await.ok(),
                Err(_) => None,
            };
            let Some(stream) = opened else { return false };
            self.packet_stream = Some(stream);
        }
        let stream = self.packet_stream.as_mut().expect("opened above");
        let mut framed = Vec::with_capacity(4 + self.datagram.len());
        framed.extend_from_slice(&(self.datagram.len() as u32).to_be_bytes());
        framed.extend_from_slice(&self.datagram);
        matches!(
            tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&framed)).await,
            Ok(Ok(()))
        )
    }
}

/// Control messages read off `recv` by a task of their own (reading is not cancel-safe).
pub(super) fn spawn_control_reader(
    mut recv: wtransport::RecvStream,
) -> mpsc::Receiver<Result<Control, wire::ControlError>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let message = wire::read_control(&mut recv).await;
            let failed = message.is_err();
            if tx.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}
