# syntax=docker/dockerfile:1
#
# The Clairon image: one binary, `clairon`, that runs any of the five services
# (`clairon serve --services users`), the topic set-up (`clairon kafka init`)
# or all five at once (`clairon serve`, the default command).
#
#   docker build -t clairon:local .          # or scripts/build-docker-images.sh
#   docker run --rm -p 8081-8085:8081-8085 clairon:local
#
# The first stage compiles with the full Rust toolchain; the final image holds
# the binary on distroless (glibc, CA certificates, a nonroot user), with no
# shell, package manager or compiler.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
# The bundled librdkafka (the Kafka client) builds with its own configure and
# make: it needs a C and C++ compiler, make, pkg-config and zlib. MySQL and
# SQLite support are pure Rust or bundled by sqlx.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ make pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
# zlib linked statically, so the runtime image needs nothing but glibc and libgcc.
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# Cache mounts keep the crates.io registry and compiled dependencies between
# builds; the binary is copied out of the cached target folder.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p clairon \
 && install -D -m 0755 target/release/clairon /out/usr/local/bin/clairon \
 && mkdir -p /out/var/lib/clairon

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="clairon" \
      org.opencontainers.image.description="Clairon real-time notification platform" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usr/local/bin/clairon /usr/local/bin/clairon
# The data folder (generated secrets, embedded databases when no MySQL/Kafka is
# configured), owned by the nonroot user (65532).
COPY --from=builder --chown=65532:65532 /out/var/lib/clairon /var/lib/clairon
ENV CLAIRON_DATA_DIR=/var/lib/clairon
USER 65532:65532
# users, notifications, events (publisher), logs (audit), web.
EXPOSE 8081 8082 8083 8084 8085
ENTRYPOINT ["/usr/local/bin/clairon"]
CMD ["serve"]
