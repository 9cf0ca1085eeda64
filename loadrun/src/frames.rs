//! Subscribers over WebTransport (`--subscriber-transport webtransport`): a participant that
//! joined with `media: "webtransport"` asks for every producer with `consumeFrames` and
//! measures the frames the server sends on its session (framing: README "Media over
//! WebTransport"): frames and bytes while measuring, one-way latency from the stamp of each
//! frame's first packet, and the layers received. Loss is not counted for frames.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use testkit::measure::{RxStats, PHASE_MEASURE};
use testkit::signal::SignalClient;
use uuid::Uuid;

use crate::{next_message, Layer, Outcome, RunContext};

/// Frame counters of one subscriber, and the kind of each consumed producer.
#[derive(Default)]
struct Received {
    rx: RxStats,
    audio: HashMap<Uuid, bool>,
    ready: bool,
}

pub(crate) async fn subscribe(
    ctx: &RunContext,
    signal: &mut SignalClient,
    room: &Value,
    mut stop: tokio::sync::watch::Receiver<bool>,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let received = Arc::new(Mutex::new(Received::default()));
    let reader = tokio::spawn(accept_streams(
        signal.wt_connection().clone(),
        received.clone(),
        ctx.shared.clone(),
    ));
    let producers: Vec<Value> = room["data"]["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["producers"].as_array().cloned().unwrap_or_default())
        .collect();
    for producer in &producers {
        consume(ctx, signal, producer, &received).await?;
    }
    let result: anyhow::Result<()> = async {
        while let Some(message) = next_message(signal, &mut stop).await? {
            if message["type"] == "newProducer" {
                consume(ctx, signal, &message["data"]["producer"], &received).await?;
            }
        }
        Ok(())
    }
    .await;
    reader.abort();
    let r = std::mem::take(&mut received.lock().unwrap_or_else(|p| p.into_inner()).rx);
    outcome.rx = Some(r);
    result?;
    let _ = tokio::time::timeout(Duration::from_secs(2), signal.call("leaveRoom", json!({}))).await;
    Ok(())
}

async fn consume(
    ctx: &RunContext,
    signal: &mut SignalClient,
    producer: &Value,
    received: &Arc<Mutex<Received>>,
) -> anyhow::Result<()> {
    let Some(id) = producer["producerId"].as_str() else {
        return Ok(());
    };
    let audio = producer["kind"] == "audio";
    if let Ok(uuid) = id.parse::<Uuid>() {
        received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .audio
            .insert(uuid, audio);
    }
    signal
        .call("consumeFrames", json!({ "producerId": id }))
        .await?;
    if !audio && ctx.config.layer != Layer::Auto {
        signal
            .call(
                "setPreferredLayer",
                json!({ "producerId": id, "layer": ctx.config.layer.as_str() }),
            )
            .await?;
    }
    Ok(())
}

async fn accept_streams(
    connection: wtransport::Connection,
    received: Arc<Mutex<Received>>,
    shared: Arc<testkit::measure::Shared>,
) {
    while let Ok(stream) = connection.accept_uni().await {
        tokio::spawn(read_stream(stream, received.clone(), shared.clone()));
    }
}

async fn read_stream(
    mut stream: wtransport::RecvStream,
    received: Arc<Mutex<Received>>,
    shared: Arc<testkit::measure::Shared>,
) {
    let mut header = [0u8; 18];
    if stream.read_exact(&mut header).await.is_err() || header[0] != 1 {
        return;
    }
    let Ok(id) = <[u8; 16]>::try_from(&header[1..17]) else {
        return;
    };
    let producer = Uuid::from_bytes(id);
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 13];
        if stream.read_exact(&mut head).await.is_err() {
            return;
        }
        let length = u32::from_be_bytes([head[9], head[10], head[11], head[12]]) as usize;
        payload.resize(length, 0);
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        let now = std::time::Instant::now();
        let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
        if !r.ready {
            r.ready = true;
            r.rx.first_packet = Some(now);
            shared.subscribers_ready.fetch_add(1, Ordering::Relaxed);
        }
        if shared.phase.load(Ordering::Relaxed) == PHASE_MEASURE {
            let audio = r.audio.get(&producer).copied().unwrap_or(false);
            r.rx.on_frame(&payload, audio, shared.micros(now));
        }
    }
}
