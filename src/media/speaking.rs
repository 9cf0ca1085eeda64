//! Who is speaking, from the audio level every Opus packet of a browser carries (RFC 6464:
//! 0 dBov is the loudest, -127 silence). The bandwidth allocator serves a speaker's video
//! before the others' when a subscriber's link is short (LiveKit and Zoom do the same): the
//! face that talks is the one people look at.

use std::time::{Duration, Instant};

/// At or above this level a packet counts as voice. Chromium's fake microphone and normal
/// speech sit around -20 to -40 dBov; room noise through a browser's noise suppression below
/// -60.
pub const VOICE_LEVEL_DBOV: i8 = -50;
/// This many voiced packets in a row (100 ms at 20 ms per packet) make speech, so a click or
/// a cough does not reorder everyone's pictures.
const VOICED_RUN: u8 = 5;
/// Someone who spoke stays "speaking" this long: pauses between words and sentences.
pub const SPEAKING_HOLD: Duration = Duration::from_secs(2);

/// Voice activity of one audio track.
#[derive(Debug, Default, Clone, Copy)]
pub struct VoiceActivity {
    voiced_run: u8,
    last_speech: Option<Instant>,
}

impl VoiceActivity {
    /// One packet's level (`None`: the packet carried no level, which changes nothing).
    pub fn on_level(&mut self, level_dbov: Option<i8>, now: Instant) {
        let Some(level) = level_dbov else {
            return;
        };
        if level >= VOICE_LEVEL_DBOV {
            self.voiced_run = self.voiced_run.saturating_add(1);
            if self.voiced_run >= VOICED_RUN {
                self.last_speech = Some(now);
            }
        } else {
            self.voiced_run = 0;
        }
    }

    pub fn is_speaking(&self, now: Instant) -> bool {
        self.last_speech
            .is_some_and(|t| now.saturating_duration_since(t) < SPEAKING_HOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: Duration = Duration::from_millis(20);

    fn feed(voice: &mut VoiceActivity, levels: &[i8], start: Instant) -> Instant {
        let mut at = start;
        for level in levels {
            voice.on_level(Some(*level), at);
            at += PACKET;
        }
        at
    }

    #[test]
    fn a_run_of_voiced_packets_is_speech_and_holds_through_a_pause() {
        let mut voice = VoiceActivity::default();
        let start = Instant::now();
        let at = feed(&mut voice, &[-30; 4], start);
        assert!(!voice.is_speaking(at), "four packets are not speech yet");
        let at = feed(&mut voice, &[-30], at);
        assert!(voice.is_speaking(at));
        // Silence between sentences: still the speaker for the hold.
        let at = feed(&mut voice, &[-90; 50], at);
        assert!(
            voice.is_speaking(at),
            "one second of silence keeps the speaker"
        );
        assert!(!voice.is_speaking(at + SPEAKING_HOLD));
    }

    #[test]
    fn clicks_quiet_rooms_and_packets_without_a_level_are_not_speech() {
        let mut voice = VoiceActivity::default();
        let start = Instant::now();
        // Loud blips broken up by quiet packets never make a run.
        let at = feed(&mut voice, &[-10, -10, -80, -10, -10, -10, -90, -20], start);
        assert!(!voice.is_speaking(at));
        let at = feed(&mut voice, &[VOICE_LEVEL_DBOV - 1; 20], at);
        assert!(!voice.is_speaking(at), "below the voice level");
        for _ in 0..20 {
            voice.on_level(None, at);
        }
        assert!(!voice.is_speaking(at), "no level extension");
    }
}
