# syntax=docker/dockerfile:1
# flexgate container: build in the official Rust image, run on slim Debian as a
# non-root user. The route rules in config/ are baked in; mount your own over
# /etc/flexgate/config or point FLEXGATE_CONFIG elsewhere.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY tests ./tests
COPY benches ./benches
COPY config ./config
RUN cargo build --release --locked --bin flexgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/flexgate --create-home flexgate
COPY --from=build /src/target/release/flexgate /usr/local/bin/flexgate
COPY config /etc/flexgate/config
USER flexgate
WORKDIR /var/lib/flexgate
ENV DATABASE_URL=sqlite:///var/lib/flexgate/flexgate.db \
    FLEXGATE_CONFIG=/etc/flexgate/config/flexmeasures.toml
EXPOSE 8443 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/flexgate", "probe", "http://127.0.0.1:9090/readyz"]
ENTRYPOINT ["/usr/local/bin/flexgate"]
CMD ["serve"]
