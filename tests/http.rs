//! The HTTP surface: health endpoints, the demo page, and /dev/token only outside production.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

async fn server(environment: &str) -> sfu::ServerHandle {
    common::start_server_with(&["--environment", environment, "--workers", "1"]).await
}

#[tokio::test]
async fn development_serves_demo_health_and_dev_tokens_that_authenticate() {
    let server = server("development").await;
    let addr = server.http_addr;
    assert_eq!(get(addr, "/healthz").await, (200, "ok".to_string()));
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["dependencies"]["mediaWorkers"]["status"], "ok");
    let (status, body) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("<html"), "demo page served");

    let (status, body) = get(addr, "/dev/token?name=Ada").await;
    assert_eq!(status, 200);
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let user = server
        .ctx
        .auth
        .verify(token["token"].as_str().unwrap())
        .expect("dev token verifies");
    assert_eq!(user.user.full_name.as_deref(), Some("Ada"));
    server.stop().await;
}

#[tokio::test]
async fn production_has_no_dev_token_endpoint() {
    let server = server("production").await;
    assert_eq!(get(server.http_addr, "/dev/token").await.0, 404);
    assert_eq!(get(server.http_addr, "/healthz").await.0, 200);
    let (status, body) = get(server.http_addr, "/status").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"environment\":\"production\""), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_each_worker_and_their_sum() {
    // Two workers; one room lives on one of them.
    let server = common::start_server_with(&["--workers", "2"]).await;
    let mut ws = common::joined(&server, "status-room", "pub", true).await;
    let publisher = common::Peer::spawn().await;
    publisher.publish(&mut ws).await;
    let (status, body) = get(server.http_addr, "/status").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let workers = status["perWorker"].as_array().expect("perWorker");
    assert_eq!(workers.len(), 2, "{status}");
    let sum = |field: &str| -> u64 {
        workers
            .iter()
            .map(|w| w["media"][field].as_u64().unwrap())
            .sum()
    };
    for field in ["transports", "producers", "consumers"] {
        assert_eq!(
            sum(field),
            status["media"][field].as_u64().unwrap(),
            "{field}"
        );
    }
    // The publisher's transport and its two producers are on exactly one worker.
    let busy: Vec<_> = workers
        .iter()
        .filter(|w| w["media"]["producers"] == 2)
        .collect();
    assert_eq!(busy.len(), 1, "{status}");
    assert_eq!(
        busy[0]["addr"],
        status["workers"][busy[0]["index"].as_u64().unwrap() as usize]
    );
    server.stop().await;
}
