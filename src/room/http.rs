//! WHIP and WHEP: one HTTP exchange per publisher or player, a participant without
//! signaling. Its producers are announced like any other; a player ends when what it plays
//! goes away.

use std::sync::Arc;

use uuid::Uuid;

use super::events::{ConsumerOrigin, RoomEvent};
use super::model::{Dialect, Member};
use super::ports::Unheard;
use super::{RoomError, RoomErrorKind, Rooms};

/// A WHIP/WHEP session as the HTTP layer keeps it.
#[derive(Debug, Clone)]
pub struct HttpMediaSession {
    pub participant_id: String,
    pub answer: String,
}

/// A WHIP/WHEP session in some room (for the drain and the DELETE path check).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSessionRef {
    pub room_id: String,
    pub participant_id: String,
    /// WHIP (publishes) rather than WHEP (plays).
    pub publishes: bool,
}

/// Who asks to end a WHIP/WHEP session.
pub struct Requester<'a> {
    pub user_id: &'a str,
    /// The token is a room admin for this room.
    pub admin_here: bool,
}

impl Rooms {
    /// A WHIP/WHEP session: a participant without signaling, whose one offer `negotiate`
    /// applies; if that fails, the participant leaves again and nothing remains.
    async fn http_session(
        &self,
        room_id: &str,
        user_id: &str,
        token: &str,
        dialect: Dialect,
        negotiate: impl AsyncFnOnce(&str) -> Result<String, RoomError>,
    ) -> Result<HttpMediaSession, RoomError> {
        let label = if dialect == Dialect::Whip {
            "WHIP"
        } else {
            "WHEP"
        };
        let member = Member {
            user_id: user_id.to_string(),
            display_name: format!("{label} {user_id}"),
            // WHEP players consume explicitly; WHIP publishers consume nothing.
            can_subscribe: dialect == Dialect::Whep,
            notifier: Arc::new(Unheard),
        };
        let joined = self.join(room_id, member, token, dialect).await?;
        let participant_id = joined.participant_id;
        match negotiate(&participant_id).await {
            Ok(answer) => Ok(HttpMediaSession {
                participant_id,
                answer,
            }),
            Err(e) => {
                self.leave(room_id, &participant_id).await;
                Err(e)
            }
        }
    }

    /// WHIP: a participant that only publishes the offer's tracks.
    pub async fn whip_publish(
        &self,
        room_id: &str,
        user_id: &str,
        token: &str,
        sdp: String,
    ) -> Result<HttpMediaSession, RoomError> {
        self.http_session(room_id, user_id, token, Dialect::Whip, async |pid| {
            let (answer, announced) = self.publish(room_id, pid, sdp).await?;
            if announced.is_empty() {
                return Err(RoomError::new(
                    RoomErrorKind::UnsupportedCodec,
                    "the offer has no audio or video track with a codec this server forwards",
                ));
            }
            Ok(answer)
        })
        .await
    }

    /// WHEP: a participant that plays the room's current producers (one per offered m-line).
    pub async fn whep_play(
        &self,
        room_id: &str,
        user_id: &str,
        token: &str,
        sdp: String,
    ) -> Result<HttpMediaSession, RoomError> {
        self.http_session(room_id, user_id, token, Dialect::Whep, async |pid| {
            self.whep_attach(room_id, pid, sdp).await
        })
        .await
    }

    async fn whep_attach(
        &self,
        room_id: &str,
        participant_id: &str,
        sdp: String,
    ) -> Result<String, RoomError> {
        let (worker, subscriber, producers) =
            self.with_participant(room_id, participant_id, |room, pid| {
                let producers = room.producers(Some(pid));
                let worker = room.worker;
                Ok((worker, Self::participant(room, pid).subscriber, producers))
            })?;
        if producers.is_empty() {
            return Err(RoomError::new(
                RoomErrorKind::ProducerNotFound,
                "nothing is published in this room yet",
            ));
        }
        let (answer, attached) = self
            .media
            .whep_offer(worker, subscriber, sdp, producers)
            .await?;
        self.with_participant(room_id, participant_id, |room, pid| {
            let p = Self::participant(room, pid);
            for producer in &attached {
                p.ortc
                    .consumers
                    .insert(Uuid::new_v4().to_string(), *producer);
            }
            Ok(())
        })?;
        for producer in attached {
            self.emit(RoomEvent::ConsumerCreated {
                room_id: room_id.to_string(),
                participant_id: participant_id.to_string(),
                producer_id: producer,
                origin: ConsumerOrigin::Whep,
            });
        }
        Ok(answer)
    }

    /// DELETE of a WHIP/WHEP session: only its own user or an admin of this room may end it.
    pub async fn end_http_session(
        &self,
        room_id: &str,
        participant_id: &str,
        requester: Requester<'_>,
    ) -> Result<(), RoomError> {
        let not_found = || {
            RoomError::new(
                RoomErrorKind::ParticipantNotFound,
                "no such WHIP/WHEP session in this room",
            )
        };
        {
            let state = self.lock();
            let room = state.rooms.get(room_id).ok_or_else(not_found)?;
            let p = room
                .participants
                .get(participant_id)
                .ok_or_else(not_found)?;
            if !p.dialect.is_http() {
                return Err(not_found());
            }
            if p.user_id != requester.user_id && !requester.admin_here {
                tracing::warn!(room = room_id, session = participant_id, user = %requester.user_id, "refused to end another user's WHIP/WHEP session");
                return Err(RoomError::new(
                    RoomErrorKind::NotOwner,
                    "only the user who started this session or a room admin may end it",
                ));
            }
        }
        self.leave(room_id, participant_id).await;
        Ok(())
    }

    /// Whether `participant_id` in `room_id` is a WHIP session (`Some(true)`), a WHEP one
    /// (`Some(false)`), or neither.
    pub fn is_whip_session(&self, room_id: &str, participant_id: &str) -> Option<bool> {
        let state = self.lock();
        let p = state.rooms.get(room_id)?.participants.get(participant_id)?;
        // Another node's participant, shown here: not a session of this node.
        if p.remote {
            return None;
        }
        p.dialect.is_http().then_some(p.dialect == Dialect::Whip)
    }

    /// Every WHIP/WHEP session on this node.
    pub fn http_sessions(&self) -> Vec<HttpSessionRef> {
        let state = self.lock();
        state
            .rooms
            .iter()
            .flat_map(|(room_id, room)| {
                room.participants
                    .iter()
                    .filter(|(_, p)| p.dialect.is_http() && !p.remote)
                    .map(move |(participant_id, p)| HttpSessionRef {
                        room_id: room_id.clone(),
                        participant_id: participant_id.clone(),
                        publishes: p.dialect == Dialect::Whip,
                    })
            })
            .collect()
    }
}
