# syntax=docker/dockerfile:1
#
# Production image of the `sfu` binary.
#
#   docker build -t sfu .
#   docker run --rm --network host \
#     -e DJANGO_JWT_SECRET=change-me-at-least-16-chars -e ANNOUNCED_IP=<address clients reach> sfu
#
# Without --network host, publish every port and still set ANNOUNCED_IP to the host's address:
#   -p 3000:3000 -p 9090:9090 -p 3001:3001/udp -p 10000-10100:10000-10100/udp -p 7881:7881
# (ANNOUNCED_IP goes into ICE candidates; the default 127.0.0.1 only works for a browser on the
# same machine.) NODE_ENV=production is baked in, so DJANGO_JWT_SECRET (or JWT_PUBLIC_KEY) must
# be given or the server refuses to start. Kubernetes manifests: k8s/README.md.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder

# No extra packages: the C code in the dependency tree is aws-lc-sys (features: only
# `prebuilt-nasm`, no `bindgen`, no FIPS), which on x86_64/aarch64 Linux uses its plain-`cc`
# builder with pre-generated bindings, and the bundled SQLite of libsqlite3-sys, also plain `cc`.
# The rust image already ships gcc, g++, make and perl. The crate was verified to build on a
# machine with neither cmake nor clang. For a target without pre-generated aws-lc bindings, add:
#   RUN apt-get update && apt-get install -y --no-install-recommends cmake clang \
#       && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# 1. Dependencies only, cached as long as the manifests and Cargo.lock are unchanged: build the
#    real dependency graph against placeholder sources. benches/forwarding.rs must exist because
#    Cargo.toml declares that bench target (cargo checks target paths when loading a manifest).
#    The workspace's other crates (testkit/, loadrun/: test helpers and the load runner, not part
#    of the image) only need manifests and placeholder targets for cargo to load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml ./testkit/
COPY loadrun/Cargo.toml ./loadrun/
# Patched dependencies ([patch.crates-io]), needed to resolve the graph.
COPY vendor ./vendor
RUN mkdir -p src benches testkit/src loadrun/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/forwarding.rs \
    && echo '' > testkit/src/lib.rs \
    && echo '' > loadrun/src/lib.rs \
    && echo 'fn main() {}' > loadrun/src/main.rs \
    && cargo build --release --locked --bin sfu \
    && rm -rf src benches

# 2. The crate itself. COPY keeps the files' original mtimes, which can be older than the
#    placeholder build above; drop the crate's own fingerprints so cargo cannot reuse the
#    placeholder binary. Nothing else is read at compile time today (no build.rs, include_str!,
#    sqlx::migrate! or offline query! data); add a COPY here if that changes.
COPY src ./src
COPY benches ./benches
RUN rm -rf target/release/.fingerprint/sfu-* target/release/deps/sfu-* \
        target/release/deps/libsfu-* target/release/sfu \
    && cargo build --release --locked --bin sfu \
    && ./target/release/sfu --version

# ---------------------------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: outbound TLS (Django webhooks/room lookups, Postgres, Redis over TLS).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Fixed numeric ids so Kubernetes' runAsNonRoot can verify the user and volume ownership
# (fsGroup) lines up.
RUN groupadd --system --gid 10001 sfu \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin sfu

WORKDIR /app
COPY --from=builder /src/target/release/sfu /app/sfu
# Read-only for the server user: owned by root.
COPY web-demo /app/web-demo
# Writable state (the embedded SQLite audit file lives under ./data = /app/data).
RUN mkdir -p /app/data && chown 10001:10001 /app/data && chmod 0750 /app/data
VOLUME ["/app/data"]

# Every name here is a variable of src/config.rs (tests/deploy_manifests.rs checks it).
# ANNOUNCED_IP is deliberately not set: it depends on where the container runs.
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    METRICS_PORT=9090 \
    WEBTRANSPORT_PORT=3001 \
    RTC_LISTEN_IP=0.0.0.0 \
    MEDIASOUP_WORKER_RTC_MIN_PORT=10000 \
    MEDIASOUP_WORKER_RTC_MAX_PORT=10100 \
    ICE_TCP_PORT=7881 \
    WEB_DEMO_DIR=/app/web-demo \
    LOG_LEVEL=info

USER 10001:10001

# HTTP + WebSocket, Prometheus metrics, WebTransport (QUIC), media (worker i binds 10000 + i),
# ICE-TCP (one port for all workers).
EXPOSE 3000/tcp 9090/tcp 3001/udp 10000-10100/udp 7881/tcp

# The slim image has no curl/wget, and `sfu` itself has no probe subcommand (it would also need
# the production secret just to parse its configuration). bash is always present on Debian, so
# the check speaks HTTP/1.1 over bash's /dev/tcp: nothing is installed, and /healthz is exempt
# from the HTTP rate limit. It targets 127.0.0.1, which works with the default HOST=0.0.0.0.
# (Kubernetes ignores HEALTHCHECK and uses the probes in k8s/deployment.yaml.)
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-3000} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# SIGTERM starts the graceful drain (readiness 503, clients told to leave, exit 0 after at most
# DRAIN_TIMEOUT seconds plus <= 5 s of webhook delivery). Give `docker stop` enough time:
#   docker stop --time 45 <container>
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/sfu"]
