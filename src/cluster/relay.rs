//! The relay's end of a node link: this node serves clients of a room another node owns.
//! The room layer gets the owner's room and notices ([`OwnerLinks`]); the media plane gets the
//! owner's producers as remote producers, mirrored on whichever of our workers consumes
//! them, and the packets the owner sends for them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use str0m::format::PayloadParams;
use str0m::media::{Mid, Pt, Rid};
use tokio::sync::{mpsc, oneshot};
use wtransport::{ClientConfig, Connection, Endpoint, SendStream, VarInt};

use super::owner::{spawn_control_reader, WRITE_TIMEOUT};
use super::wire::{self, Control, LinkParticipant, LinkProducer};
use super::{Cluster, LinkEndpoint};
use crate::media::core::{Exports, MirrorSpec, ProducerPacket, Relay};
use crate::media::{Kind, ProducerId, TransportId};
use crate::room::ports::{OwnerLinks, RelayFeed, RoomDefinition};
use crate::room::{Notice, ParticipantView, ProducerView, RoomError, RoomErrorKind};

/// How long connecting to an owner and hearing its welcome may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep-alives, and how long a silent owner is trusted: a dead owner is noticed this soon.
const KEEP_ALIVE: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

fn unreachable(node: &str, why: impl std::fmt::Display) -> RoomError {
    RoomError::new(
        RoomErrorKind::OwnerUnreachable,
        format!("the room's owner node {node} cannot be reached ({why}); join again shortly"),
    )
}

impl OwnerLinks for Arc<Cluster> {
    fn open<'a>(
        &'a self,
        room_id: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<RelayFeed, RoomError>> {
        Box::pin(async move {
            tokio::time::timeout(OPEN_TIMEOUT, self.open_link(room_id, node))
                .await
                .unwrap_or_else(|_| Err(unreachable(node, "timed out")))
        })
    }
}

/// What dropping a relayed room's link handle does: the link task ends.
struct LinkHandle {
    _stop: oneshot::Sender<()>,
}

impl Cluster {
    async fn open_link(
        self: &Arc<Self>,
        room_id: &str,
        node: &str,
    ) -> Result<RelayFeed, RoomError> {
        let endpoint = self
            .directory
            .link_endpoint(node)
            .await?
            .ok_or_else(|| unreachable(node, "it accepts no node links"))?;
        let connection = connect(&endpoint)
            .await
            .map_err(|e| unreachable(node, format!("{e:#}")))?;
        let (mut control, mut recv) = match connection.open_bi().await {
            Ok(opening) => opening.await.map_err(|e| unreachable(node, e))?,
            Err(e) => return Err(unreachable(node, e)),
        };
        let hello = Control::Hello {
            token: self.keys.issue(self.node_id(), room_id),
            room_id: room_id.to_string(),
            node_id: self.node_id().to_string(),
        };
        control
            .write_all(&wire::encode_control(&hello))
            .await
            .map_err(|e| unreachable(node, e))?;
        let (room, participants) = match wire::read_control(&mut recv).await {
            Ok(Control::Welcome { room, participants }) => (room, participants),
            Ok(Control::Refused { code, message }) => return Err(refused(&code, message)),
            Ok(other) => return Err(unreachable(node, format!("unexpected {other:?}"))),
            Err(e) => return Err(unreachable(node, e)),
        };
        let (link, inbox) = self.media.attach_link();
        self.directory.set_relaying(room_id, true);
        let mut this = RelayLink {
            room_id: room_id.to_string(),
            cluster: self.clone(),
            connection,
            control,
            link,
            publishers: HashMap::new(),
            params: HashMap::new(),
            exports: HashMap::new(),
        };
        let views = participants
            .iter()
            .map(|p| this.participant_arrived(p))
            .collect();
        let (notices_tx, notices) = mpsc::unbounded_channel();
        let (to_owner, from_room) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        self.counters.relay_links.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            room = room_id,
            owner = node,
            "node link to the owner opened"
        );
        let (room_id, node) = (room_id.to_string(), node.to_string());
        tokio::spawn(async move {
            let reason = this.run(recv, inbox, notices_tx, from_room, stopped).await;
            tracing::info!(room = %room_id, owner = %node, reason, "node link to the owner closed");
            this.close(reason);
        });
        Ok(RelayFeed {
            definition: RoomDefinition {
                room_id: room.room_id,
                name: room.name,
                description: room.description,
                max_participants: room.max_participants,
            },
            participants: views,
            notices,
            to_owner,
            link: Box::new(LinkHandle { _stop: stop }),
        })
    }
}

/// A client endpoint of its own per link, trusting exactly the owner's certificate.
async fn connect(endpoint: &LinkEndpoint) -> anyhow::Result<Connection> {
    let builder = ClientConfig::builder().with_bind_default();
    let builder = match endpoint.cert_hash {
        Some(hash) => {
            builder.with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        }
        None => builder.with_native_certs(),
    };
    let config = builder
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IDLE_TIMEOUT))?
        .build();
    let client = Endpoint::client(config)?;
    Ok(client.connect(&endpoint.url).await?)
}

/// The owner's refusal as the room layer's error.
fn refused(code: &str, message: String) -> RoomError {
    let (kind, hint) = match code {
        "ROOM_NOT_FOUND" => (RoomErrorKind::RoomNotFound, ""),
        // A configuration fault, not something a client can wait out.
        "NOT_AUTHENTICATED" => (
            RoomErrorKind::Internal,
            " (every node needs the same DJANGO_JWT_SECRET)",
        ),
        _ => (RoomErrorKind::OwnerUnreachable, ""),
    };
    RoomError::new(
        kind,
        format!("the room's owner refused the link: {message}{hint}"),
    )
}

struct RelayLink {
    room_id: String,
    cluster: Arc<Cluster>,
    connection: Connection,
    control: SendStream,
    /// Our index on the media plane: the home of every mirror of the owner's producers.
    link: usize,
    /// A transport id of ours per owner participant (mirrors group producers by it).
    publishers: HashMap<String, TransportId>,
    /// What each producer's payload types mean, as the owner said.
    params: HashMap<(ProducerId, Pt), PayloadParams>,
    /// Which of our workers mirror which producer, and what their consumers want.
    exports: HashMap<ProducerId, Exports>,
}

impl RelayLink {
    async fn run(
        &mut self,
        recv: wtransport::RecvStream,
        mut inbox: mpsc::Receiver<Relay>,
        notices: mpsc::UnboundedSender<Notice>,
        mut from_room: mpsc::UnboundedReceiver<Notice>,
        mut stopped: oneshot::Receiver<()>,
    ) -> &'static str {
        let mut controls = spawn_control_reader(recv);
        let (packets_tx, mut packets) = mpsc::channel::<Vec<u8>>(1024);
        tokio::spawn(read_packet_streams(self.connection.clone(), packets_tx));
        loop {
            tokio::select! {
                _ = &mut stopped => return "room closed here",
                datagram = self.connection.receive_datagram() => match datagram {
                    Ok(datagram) => self.on_packet(&datagram.payload()),
                    Err(_) => return "connection lost",
                },
                Some(bytes) = packets.recv() => self.on_packet(&bytes),
                Some(notice) = from_room.recv() => {
                    let Some(control) = local_to_owner(notice) else { continue };
                    if !self.send(&control).await {
                        return "owner gone";
                    }
                }
                control = controls.recv() => match control {
                    Some(Ok(Control::RoomClosed)) => {
                        let _ = notices.send(Notice::RoomClosed { room_id: String::new() });
                        return "room closed on the owner";
                    }
                    Some(Ok(control)) => {
                        if let Some(notice) = self.on_control(control) {
                            let _ = notices.send(notice);
                        }
                    }
                    Some(Err(_)) | None => return "control stream ended",
                },
                relay = inbox.recv() => match relay {
                    Some(relay) => {
                        if !self.on_relay(relay).await {
                            return "owner gone";
                        }
                    }
                    None => return "media plane gone",
                },
            }
        }
    }

    /// A participant of the owner: its producers become remote producers here.
    fn participant_arrived(&mut self, p: &LinkParticipant) -> ParticipantView {
        let publisher = self.publisher_of(&p.participant_id);
        let producers = p
            .producers
            .iter()
            .filter_map(|producer| self.producer_arrived(producer, publisher))
            .collect();
        p.view(producers)
    }

    /// Our transport id for an owner participant's producers (made on first use).
    fn publisher_of(&mut self, participant_id: &str) -> TransportId {
        *self
            .publishers
            .entry(participant_id.to_string())
            .or_insert_with(|| self.cluster.media.new_transport_id())
    }

    fn producer_arrived(&self, p: &LinkProducer, publisher: TransportId) -> Option<ProducerView> {
        let kind = match p.kind.as_str() {
            "audio" => Kind::Audio,
            "video" => Kind::Video,
            _ => return None,
        };
        self.cluster.media.add_remote_producer(MirrorSpec {
            producer: p.producer_id,
            home: self.link,
            publisher,
            kind,
            mid: Mid::from(p.mid.as_str()),
            rids: p.rids.iter().map(|r| r.as_deref().map(Rid::from)).collect(),
            mime_type: p.mime_type.clone(),
        });
        Some(ProducerView {
            producer_id: p.producer_id,
            participant_id: p.participant_id.clone(),
            kind,
            layers: p.layers.clone(),
        })
    }

    /// The owner's message; what the room layer must hear of it.
    fn on_control(&mut self, control: Control) -> Option<Notice> {
        match control {
            Control::ParticipantJoined { participant } => Some(Notice::ParticipantJoined(
                self.participant_arrived(&participant),
            )),
            Control::ParticipantLeft { participant_id } => {
                self.publishers.remove(&participant_id);
                Some(Notice::ParticipantLeft { participant_id })
            }
            Control::ProducerAdded { producer } => {
                let publisher = self.publisher_of(&producer.participant_id);
                self.producer_arrived(&producer, publisher)
                    .map(Notice::NewProducer)
            }
            Control::ProducerClosed {
                producer_id,
                participant_id,
            } => {
                self.producer_gone(producer_id);
                Some(Notice::ProducerClosed {
                    producer_id,
                    participant_id,
                })
            }
            Control::ProducerGone { producer_id } => {
                self.producer_gone(producer_id);
                None
            }
            Control::ProducerPaused {
                producer_id,
                participant_id,
                paused,
            } => Some(Notice::ProducerPaused {
                producer_id,
                participant_id,
                paused,
            }),
            Control::Codec {
                producer_id,
                params,
            } => {
                self.params.insert((producer_id, params.pt()), params);
                None
            }
            _ => None,
        }
    }

    /// The producer ended on the owner: our mirrors of it close, and it is forgotten.
    fn producer_gone(&mut self, producer: ProducerId) {
        self.cluster
            .media
            .remove_remote_producer(producer, self.link);
        self.params.retain(|(p, _), _| *p != producer);
        if let Some(exports) = self.exports.remove(&producer) {
            for (worker, _) in exports.to {
                self.cluster
                    .media
                    .send_relay(worker, Relay::ProducerGone { producer });
            }
        }
    }

    /// A packet from the owner: to every worker of ours that mirrors its producer.
    fn on_packet(&mut self, bytes: &[u8]) {
        let counters = &self.cluster.counters;
        counters.datagrams_in.fetch_add(1, Ordering::Relaxed);
        let params = &self.params;
        let packet = wire::decode_packet(bytes, Instant::now(), |producer, pt| {
            params.get(&(producer, pt)).copied()
        });
        let Ok(packet) = packet else {
            counters.dropped_in.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let exports = self.exports.get(&packet.producer);
        // Without its payload parameters a mirror could not map the codec; the owner sends
        // them before the first packet of each payload type, so only a reordered first
        // packet waits here (dropped, like a lost one).
        let (Some(exports), Some(_)) = (exports, packet.params) else {
            counters.dropped_in.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.deliver(exports, packet);
    }

    fn deliver(&self, exports: &Exports, packet: ProducerPacket) {
        for (worker, _) in &exports.to {
            // The payload is shared; each worker gets its own header copy.
            let batch = Relay::Packets(vec![packet.clone()]);
            if !self.cluster.media.send_relay(*worker, batch) {
                self.cluster
                    .counters
                    .dropped_in
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What one of our workers' mirrors says: passed on to the owner.
    async fn on_relay(&mut self, relay: Relay) -> bool {
        let control = match relay {
            Relay::Export {
                producer,
                to,
                nonce,
            } => {
                if !self.cluster.media.brings(self.link, producer) {
                    // Gone on the owner meanwhile: the new mirror closes at once.
                    self.cluster
                        .media
                        .send_relay(to, Relay::ProducerGone { producer });
                    return true;
                }
                let exports = self.exports.entry(producer).or_default();
                let first = exports.to.is_empty();
                exports.add(to, nonce);
                if !first {
                    return true;
                }
                Control::Export {
                    producer_id: producer,
                }
            }
            Relay::Keyframe { producer, layer } => Control::Keyframe {
                producer_id: producer,
                layer,
            },
            Relay::Wants {
                producer,
                from,
                layers,
            } => {
                let Some(exports) = self.exports.get_mut(&producer) else {
                    return true;
                };
                exports.set_wants(from, layers);
                let Some(wanted) = exports.wanted() else {
                    return true;
                };
                Control::Wants {
                    producer_id: producer,
                    layers: wanted.to_vec(),
                }
            }
            Relay::Unexport {
                producer,
                from,
                nonce,
            } => {
                let Some(exports) = self.exports.get_mut(&producer) else {
                    return true;
                };
                exports.remove(from, nonce);
                if !exports.to.is_empty() {
                    return true;
                }
                self.exports.remove(&producer);
                Control::Unexport {
                    producer_id: producer,
                }
            }
            // Our mirrors never export (only a producer's home does).
            Relay::Packets(_) | Relay::ProducerGone { .. } => return true,
        };
        self.send(&control).await
    }

    /// An owner that does not read for [`WRITE_TIMEOUT`] is given up on.
    async fn send(&mut self, control: &Control) -> bool {
        let bytes = wire::encode_control(control);
        let write = self.control.write_all(&bytes);
        matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
    }

    /// The link is over: every mirror it fed closes, the media plane forgets it.
    fn close(&mut self, reason: &str) {
        let producers: Vec<ProducerId> = self.exports.keys().copied().collect();
        for producer in producers {
            self.producer_gone(producer);
        }
        self.cluster.media.detach_link(self.link);
        self.cluster.directory.set_relaying(&self.room_id, false);
        self.connection
            .close(VarInt::from_u32(0), reason.as_bytes());
        self.cluster
            .counters
            .relay_links
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the owner hears of this node's own participants.
fn local_to_owner(notice: Notice) -> Option<Control> {
    Some(match notice {
        Notice::ParticipantJoined(view) => Control::LocalJoined {
            participant: LinkParticipant::joining(view),
        },
        Notice::ParticipantLeft { participant_id } => Control::LocalLeft { participant_id },
        _ => return None,
    })
}

/// Packets the owner sent on unidirectional streams (too large for a datagram).
async fn read_packet_streams(connection: Connection, packets: mpsc::Sender<Vec<u8>>) {
    while let Ok(mut stream) = connection.accept_uni().await {
        let packets = packets.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 4];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes(len) as usize;
                if len > 64 * 1024 {
                    return;
                }
                let mut bytes = vec![0u8; len];
                if stream.read_exact(&mut bytes).await.is_err()
                    || packets.send(bytes).await.is_err()
                {
                    return;
                }
            }
        });
    }
}
