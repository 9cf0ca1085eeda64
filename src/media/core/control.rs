//! Commands that change what a consumer is sent without renegotiating: pause and resume
//! (restart at a keyframe), and the preferred simulcast layer.

use std::time::Instant;

use super::{Egress, WorkerCore};
use crate::media::simulcast::Preference;
use crate::media::{MediaError, ProducerId, TransportId};

impl WorkerCore {
    pub fn set_consumer_paused(
        &mut self,
        id: TransportId,
        producer: ProducerId,
        paused: bool,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let ck = self.consumer_of(id, producer)?;
        let was = std::mem::replace(&mut self.consumers[ck].paused, paused);
        if was && !paused {
            self.start_at_keyframe(ck, now);
        }
        self.after_drain(now, egress);
        Ok(())
    }

    pub fn set_producer_paused(
        &mut self,
        producer: ProducerId,
        paused: bool,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let pk = self.producer_key(producer)?;
        let was = std::mem::replace(&mut self.producers[pk].paused, paused);
        if was && !paused {
            for ck in self.producers[pk].consumers.clone() {
                self.start_at_keyframe(ck, now);
            }
        }
        self.after_drain(now, egress);
        Ok(())
    }

    pub fn set_preference(
        &mut self,
        id: TransportId,
        producer: ProducerId,
        preference: Preference,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let ck = self.consumer_of(id, producer)?;
        self.consumers[ck].selector.preference = preference;
        self.retarget_consumer(ck, now);
        self.after_drain(now, egress);
        Ok(())
    }

    /// The subscriber ranks this consumer (1 lowest, 255 highest); with the estimator on, the
    /// link is divided again at once.
    pub fn set_priority(
        &mut self,
        id: TransportId,
        producer: ProducerId,
        priority: u8,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let ck = self.consumer_of(id, producer)?;
        self.consumers[ck].priority = priority.max(1);
        let key = self.consumers[ck].transport;
        if self.transports[key].bwe.as_ref().is_some_and(|b| b.active) {
            self.allocate(key, now);
        }
        self.after_drain(now, egress);
        Ok(())
    }
}
