//! Rate limits trip for one client only and recover; Prometheus series move with real media.
//! The recorder is process-wide, but gauges and totals are refreshed from the scraped server
//! at scrape time, so other servers in this process do not disturb the assertions.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// Value of an unlabelled series, 0 when absent.
fn value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_publish_and_subscribe() {
    let server = start_server().await;
    let before = scrape(server.metrics_addr).await;
    assert_eq!(value(&before, "sfu_participants"), 0.0);
    assert_eq!(value(&before, "sfu_producers"), 0.0);
    assert!(before.contains("process_resident_memory_bytes"));

    let mut publisher_ws = WsClient::connect(server.http_addr).await;
    publisher_ws.authenticate(&token(&server, "p")).await;
    ok(
        &publisher_ws
            .request("createRoom", json!({ "name": "m", "roomId": "metrics" }))
            .await,
        "createRoomResponse",
    );
    ok(
        &publisher_ws
            .request(
                "joinRoom",
                json!({ "roomId": "metrics", "displayName": "P" }),
            )
            .await,
        "joinRoomResponse",
    );
    let mut sub_ws = WsClient::connect(server.http_addr).await;
    sub_ws.authenticate(&token(&server, "s")).await;
    ok(
        &sub_ws
            .request(
                "joinRoom",
                json!({ "roomId": "metrics", "displayName": "S" }),
            )
            .await,
        "joinRoomResponse",
    );
    let publisher = Peer::spawn().await;
    let subscriber = Peer::spawn().await;
    publisher.publish(&mut publisher_ws).await;
    loop {
        let offer = sub_ws
            .notification("subscriberOffer", Duration::from_secs(10))
            .await;
        subscriber
            .answer_subscriber_offer(&mut sub_ws, &offer)
            .await;
        if offer["data"]["tracks"].as_array().unwrap().len() == 2 {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while subscriber.received().await.len() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "no media forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let after = scrape(server.metrics_addr).await;
    assert_eq!(value(&after, "sfu_rooms"), 1.0);
    assert_eq!(value(&after, "sfu_participants"), 2.0);
    assert_eq!(value(&after, "sfu_producers"), 2.0);
    assert_eq!(value(&after, "sfu_consumers"), 2.0);
    assert!(
        value(&after, "sfu_rtp_packets_forwarded_total") >= 20.0,
        "{after}"
    );
    assert!(value(&after, "sfu_rtp_bytes_forwarded_total") > 0.0);
    assert!(value(&after, "sfu_plis_sent_total") >= 1.0);
    assert!(
        after.contains("sfu_signaling_request_duration_seconds_bucket{type=\"publisherOffer\""),
        "latency histogram by request type"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_limit_trips_for_one_user_and_recovers() {
    let server = start_server_with(&["--rate-limit-messages-per-second", "5"]).await;
    let mut noisy = WsClient::connect(server.http_addr).await;
    noisy.authenticate(&token(&server, "noisy")).await;
    let mut calm = WsClient::connect(server.http_addr).await;
    calm.authenticate(&token(&server, "calm")).await;

    // 5/s with a burst of 10: thirty pings at once must trip.
    let mut limited = None;
    for _ in 0..30 {
        let reply = noisy.request("ping", json!({})).await;
        if reply["type"] == "error" {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("the limit tripped");
    assert_eq!(error_code(&limited), "RATE_LIMITED");
    let retry_after = limited["data"]["retryAfterMs"]
        .as_u64()
        .expect("retry hint");
    assert!(retry_after > 0 && retry_after <= 1000, "{limited}");

    // Another user is unaffected meanwhile.
    ok(&calm.request("ping", json!({})).await, "pong");

    // After the hint, the noisy user works again.
    tokio::time::sleep(Duration::from_millis(retry_after + 50)).await;
    ok(&noisy.request("ping", json!({})).await, "pong");
    server.stop().await;
}
