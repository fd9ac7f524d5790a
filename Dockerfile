# Ferry container image.
#
# Templates, static files and SQL migrations are compiled into the binary,
# so the runtime stage only needs the `ferry` executable and CA certificates.
#
#   docker build -t ferry .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e REDIS_URL=... ferry

# ---------- Build stage ----------
FROM rust:1.95-bookworm AS builder

WORKDIR /app

# Manifests (Cargo.lock is required by --locked), then src/, templates/, static/,
# migrations/ and .sqlx/; .dockerignore keeps target/, .git/, .env, ... out.
COPY Cargo.toml Cargo.lock ./
COPY . .

# sqlx checks queries against the prepared metadata in .sqlx/ instead of a live database.
ENV SQLX_OFFLINE=true

RUN cargo build --release --locked --bin ferry

# ---------- Runtime stage ----------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Unprivileged user; /data holds state such as the dev-mode generated secret key.
RUN groupadd --system ferry \
    && useradd --system --gid ferry --home-dir /data --shell /usr/sbin/nologin ferry \
    && mkdir -p /data \
    && chown ferry:ferry /data

COPY --from=builder /app/target/release/ferry /usr/local/bin/ferry

WORKDIR /data
USER ferry

ENV FERRY_BIND=0.0.0.0:8080
EXPOSE 8080

ENTRYPOINT ["ferry"]
# `all` runs the HTTP server and the background workers in one process.
CMD ["all"]
