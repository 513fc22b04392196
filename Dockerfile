# pendo-segment container image: one binary, every role (`pendo-segment run --role <role>`).
#
#   docker build -t pendo-segment:local .
#   docker run --rm pendo-segment:local --help
#
# Used by docker-compose.yml (every role service) and deploy/k8s/ (image `pendo-segment`,
# renamed by kustomize). Checked structurally by scripts/check-deploy.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
# Builder. rdkafka builds its bundled librdkafka from source (rdkafka-sys: C compiler, make,
# perl for OpenSSL detection, pkg-config; cmake/python3 for the optional cmake build path),
# links the system OpenSSL (feature `ssl`: libssl-dev) and zlib (feature `libz`), and builds
# zstd from source (zstd-sys).
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config perl python3 libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# 1. Dependencies only, cached until Cargo.toml or Cargo.lock change: build the real manifest
#    and lock file against stub sources (the [[bench]] targets named in Cargo.toml must exist
#    for cargo to read the manifest), then forget the stub crate's own artefacts.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && awk '/^\[\[bench\]\]/{b=1;next} b && /^name *=/{gsub(/[" ]/,"");sub(/^name=/,"");print;b=0}' Cargo.toml \
      | while read -r bench; do echo 'fn main() {}' > "benches/${bench}.rs"; done \
 && cargo build --release --locked --bin pendo-segment \
 && rm -rf src benches \
      target/release/pendo-segment target/release/pendo-segment.d \
      target/release/.fingerprint/pendo-segment-* \
      target/release/deps/pendo_segment-* target/release/deps/libpendo_segment-*

# 2. The crate itself. include_str! pulls in schemas/*.avsc and the shipped mapping.
COPY src ./src
COPY benches ./benches
COPY schemas ./schemas
COPY deploy/mappings ./deploy/mappings
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin pendo-segment \
 && install -D -m 0755 target/release/pendo-segment /out/pendo-segment

# ---------------------------------------------------------------------------------------------
# Runtime: glibc + OpenSSL 3 (librdkafka's TLS) + CA certificates (Kafka TLS, Segment and Pendo
# HTTPS). No curl: compose healthchecks use bash's /dev/tcp, Kubernetes probes use httpGet.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pendo-segment \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pendo-segment \
      --no-create-home --shell /usr/sbin/nologin pendo-segment \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/pendo-segment \
 && install -d -m 0755 /etc/pendo-segment/mappings /usr/share/pendo-segment/schemas

COPY --from=builder /out/pendo-segment /usr/local/bin/pendo-segment
# The shipped mapping (also compiled in: `pendo-segment mapping default`), as a starting point
# for transform_pendo.mapping_file, and the Avro schemas for consumers of the canonical topics.
COPY deploy/mappings/pendo-to-segment.toml /etc/pendo-segment/mappings/pendo-to-segment.toml
COPY schemas/*.avsc /usr/share/pendo-segment/schemas/

# Writable only here (segment_sink.dry_run_file in docker-compose.yml); with no --config the
# binary reads ./pendo-segment.toml if present, so the working directory holds none by default.
WORKDIR /var/lib/pendo-segment
USER 10001:10001

# 8080 pendo-webhook, 8081 segment-webhook, 9464 /metrics /healthz /readyz (every role).
# Containers must listen on 0.0.0.0: set PENDO_SEGMENT_OBSERVABILITY__LISTEN=0.0.0.0:9464 (and
# the webhook sections' listen) or the equivalent keys in the configuration file.
EXPOSE 8080 8081 9464

# SIGTERM drains, commits and exits within processing.shutdown_grace_ms (30 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["pendo-segment"]
CMD ["--help"]
