# Builds the flashsale binary and runs it on a slim image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY stress/invariants.sql stress/invariants.sql
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 flashsale
COPY --from=build /src/target/release/flashsale /usr/local/bin/flashsale
USER flashsale
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/flashsale"]
