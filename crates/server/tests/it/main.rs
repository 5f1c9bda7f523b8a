//! The server's integration tests, one binary for all (each binary would link the whole
//! stack again): the HTTP suites drive the real app in-process over real databases, the
//! process suites run the `keygate` binary itself, with real PostgreSQL, nginx and
//! docker-compose where they are needed.

#[macro_use]
mod support;

mod api;
mod binary;
mod cli;
mod console;
mod deployment;
mod envoy;
mod fleet;
mod gateway;
mod hardening;
mod hot_path;
mod lifecycle;
mod metering;
mod openapi;
mod operations;
mod resilience;
