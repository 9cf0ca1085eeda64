//! Room membership: create, join, leave, and the room-admin requests.

use std::sync::Arc;

use serde_json::json;

use super::super::protocol::wire::{ParticipantInfo, RoomInfo};
use super::super::protocol::{
    CreateRoom, ErrorCode, JoinRoom, KickParticipant, MediaPath, RoomRef,
};
use super::super::{deny, Failure, Membership, Reply, Session};
use super::frames::webtransport_required;
use crate::audit::{AuditEvent, AuditKind};
use crate::auth::Identity;
use crate::room::{Dialect, Member, RoomSpec};
use crate::turn::ice_servers_json;

fn shutting_down() -> Failure {
    deny(
        ErrorCode::ServerShuttingDown,
        "this server is shutting down; reconnect to join",
    )
}

impl Session {
    pub(super) async fn create_room(&mut self, identity: &Identity, r: CreateRoom) -> Reply {
        if self.ctx.is_draining() {
            return Err(shutting_down());
        }
        if !identity.grants.create_room {
            return Err(deny(
                ErrorCode::CreateRoomDenied,
                "this token may not create rooms",
            ));
        }
        // A token limited to some rooms may create only those.
        if let Some(id) = r.room_id.as_deref() {
            if !identity.grants.may_join(id) {
                return Err(Failure::new(
                    ErrorCode::RoomAccessDenied,
                    format!("this token may not create room `{id}`"),
                ));
            }
        } else if !identity.grants.may_join_any() {
            return Err(deny(
                ErrorCode::RoomAccessDenied,
                "this token is limited to named rooms: give `roomId`",
            ));
        }
        let spec = RoomSpec {
            name: r.name,
            description: r.description,
            max_participants: r.max_participants,
            room_id: r.room_id,
        };
        let room = self.ctx.rooms.create_room(spec, &identity.user.id).await?;
        Ok(("createRoomResponse", json!(RoomInfo::from(room))))
    }

    pub(super) async fn join_room(&mut self, identity: &Identity, r: JoinRoom) -> Reply {
        if self.ctx.is_draining() {
            return Err(shutting_down());
        }
        if !identity.grants.may_join(&r.room_id) {
            return Err(Failure::new(
                ErrorCode::RoomAccessDenied,
                format!("this token may not join room `{}`", r.room_id),
            ));
        }
        let rooms = self.ctx.rooms.clone();
        if let Some(m) = &self.membership {
            // A kick or a closed room ends membership without this session acting.
            if rooms.is_participant(&m.room_id, &m.participant_id) {
                return Err(deny(
                    ErrorCode::AlreadyInRoom,
                    "leave the current room before joining another",
                ));
            }
            self.membership = None;
        }
        let member = Member {
            user_id: identity.user.id.clone(),
            display_name: r.display_name,
            can_subscribe: identity.grants.subscribe,
            notifier: Arc::new(self.sink.clone()),
        };
        let token = self.token.clone().unwrap_or_default();
        let dialect = match r.media {
            MediaPath::Webrtc => Dialect::Sdp,
            MediaPath::Webtransport if self.frame_session.is_some() => Dialect::Frames,
            MediaPath::Webtransport => {
                return Err(webtransport_required("media: \"webtransport\""))
            }
        };
        let joined = rooms.join(&r.room_id, member, &token, dialect).await?;
        self.membership = Some(Membership {
            room_id: r.room_id.clone(),
            participant_id: joined.participant_id.clone(),
        });
        let others: Vec<ParticipantInfo> = joined.others.iter().map(Into::into).collect();
        let mut response = json!({
            "roomId": r.room_id,
            "participantId": joined.participant_id,
            "participants": others,
            "routerRtpCapabilities": rooms.router_capabilities(),
        });
        // Served here from its owner node: watching works here, publishing happens there.
        if let Some(owner) = &joined.relayed_from {
            response["relayedFrom"] = json!(owner);
        }
        // TURN servers with this user's credentials, only when TURN_URLS is configured.
        let turn = self.ctx.settings.turn.as_ref();
        if let Some(servers) = ice_servers_json(turn, &identity.user.id) {
            response["iceServers"] = servers;
        }
        Ok(("joinRoomResponse", response))
    }

    pub(super) async fn leave_room(&mut self, r: RoomRef) -> Reply {
        let Membership {
            room_id,
            participant_id,
        } = self.membership_in(r.room_id.as_deref())?;
        self.membership = None;
        self.ctx.rooms.leave(&room_id, &participant_id).await;
        Ok(("leaveRoomResponse", json!({ "roomId": room_id })))
    }

    /// Room-admin rights of this token in the room this session joined.
    fn admin_of_room(
        &self,
        identity: &Identity,
        room_id: Option<&str>,
        action: &str,
    ) -> Result<String, Failure> {
        let m = self.membership_in(room_id)?;
        if !identity.grants.room_admin || !identity.grants.may_join(&m.room_id) {
            return Err(Failure::new(
                ErrorCode::AdminRequired,
                format!("{action} needs the room-admin grant"),
            ));
        }
        Ok(m.room_id.clone())
    }

    pub(super) async fn kick_participant(
        &mut self,
        identity: &Identity,
        r: KickParticipant,
    ) -> Reply {
        let room_id = self.admin_of_room(identity, r.room_id.as_deref(), "kicking")?;
        let reason = r.reason.unwrap_or_else(|| "removed by an admin".into());
        self.ctx
            .rooms
            .kick(&room_id, &r.participant_id, &reason)
            .await?;
        tracing::warn!(room = %room_id, admin = %identity.user.id, target = %r.participant_id, "participant kicked");
        let me = self.membership()?.participant_id.clone();
        self.ctx.audit.record(
            AuditEvent::new(AuditKind::AdminAction)
                .room(&room_id)
                .participant(&me)
                .user(&identity.user.id)
                .detail(json!({ "action": "kickParticipant", "target": r.participant_id, "reason": reason })),
        );
        Ok((
            "kickParticipantResponse",
            json!({ "participantId": r.participant_id }),
        ))
    }

    pub(super) async fn close_room(&mut self, identity: &Identity, r: RoomRef) -> Reply {
        let room_id = self.admin_of_room(identity, r.room_id.as_deref(), "closing a room")?;
        self.membership = None;
        self.ctx.rooms.close_room(&room_id).await;
        tracing::warn!(room = %room_id, admin = %identity.user.id, "room closed by admin");
        self.ctx.audit.record(
            AuditEvent::new(AuditKind::AdminAction)
                .room(&room_id)
                .user(&identity.user.id)
                .detail(json!({ "action": "closeRoom" })),
        );
        Ok(("closeRoomResponse", json!({ "roomId": room_id })))
    }
}
