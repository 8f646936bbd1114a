# The flashsale service on debian:bookworm-slim. Two ways to get the binary:
#
#   docker build -t flashsale .
#       the default (last) target, `runtime`: compiles in rust:1.95-bookworm (needs a
#       registry; a cold build takes minutes);
#   cargo build --release && docker build --target runtime-prebuilt -t flashsale .
#       `runtime-prebuilt`: copies target/release/flashsale built on the host (glibc of
#       Debian 12 or older), so no Rust toolchain and no rust image are needed.
#
# docker-compose.yml picks the target with FLASHSALE_BUILD_TARGET (default `runtime`);
# stress/compose-check.sh builds `runtime-prebuilt` on machines without a registry.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY stress/invariants.sql stress/invariants.sql
RUN cargo build --release --locked

# What both targets share. No ca-certificates: the webhook client (reqwest with rustls)
# carries its own root certificates. `sleep` (coreutils) is there for a Kubernetes preStop.
FROM debian:bookworm-slim AS runtime-base
RUN useradd --system --uid 10001 flashsale
# Listening on every address makes the service refuse to start without a strong
# ADMIN_API_KEY and buyer identity (src/config.rs, check_exposure): see docker-compose.yml.
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080
USER flashsale
ENTRYPOINT ["/usr/local/bin/flashsale"]

FROM runtime-base AS runtime-prebuilt
COPY target/release/flashsale /usr/local/bin/flashsale

FROM runtime-base AS runtime
COPY --from=build /src/target/release/flashsale /usr/local/bin/flashsale
