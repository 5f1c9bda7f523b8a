# keygate: a small runtime image holding only the binary, running as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# postgres-tls builds the bundled libpq with OpenSSL, so production databases can
# require TLS (sslmode=require in the URL).
RUN cargo build --release --locked --package keygate-server --features keygate-storage/postgres-tls \
    && strip target/release/keygate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/keygate --create-home keygate
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
USER keygate
WORKDIR /var/lib/keygate
ENV KEYGATE_SERVER__HOST=0.0.0.0 \
    KEYGATE_DATABASE__URL=sqlite:///var/lib/keygate/keygate.db
EXPOSE 5001
VOLUME ["/var/lib/keygate"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["keygate", "health"]
ENTRYPOINT ["keygate"]
CMD ["serve"]
