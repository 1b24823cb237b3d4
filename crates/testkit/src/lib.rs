//! Dev-only helpers for end-to-end tests: a spawned `cloudbuild server`, fixture git
//! repositories holding npm projects, and readers for the REST API and event streams.
//!
//! Everything runs on loopback with real git, real npm and the real binary; nothing is mocked.

mod browser;
mod fluent;
mod forge;
mod http;
mod nginx;
mod process;
mod proxy;
mod redis;
mod repo;
mod s3;
mod server;
mod worker;

pub use browser::*;
pub use fluent::*;
pub use forge::*;
pub use http::*;
pub use nginx::*;
pub use process::*;
pub use proxy::*;
pub use redis::*;
pub use repo::*;
pub use s3::*;
pub use server::*;
pub use worker::*;
