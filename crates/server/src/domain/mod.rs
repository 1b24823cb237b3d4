//! Domain services: what the server does, with no HTTP in it.
//!
//! Each service takes the shared [`AppState`](crate::state::AppState) and validated inputs,
//! and returns its own typed error ([`callers::AuthError`], [`tasks::TaskError`],
//! [`workers::WorkerError`], [`releases::ReleaseError`], [`secrets::SecretError`], [`projects::ProjectError`],
//! [`users::UserError`], [`freeze::FreezeError`] and others). What a caller may do is decided in [`policy`] only, which every
//! service asks; its refusals travel in each error's `Policy` variant. The adapters over them (the HTTP
//! handlers in `api/`, the socket.io bridge in `socketio/`, later the dashboard) turn
//! requests into calls and errors into answers; no module here imports `axum`, `api` or
//! `socketio` (the tidy test checks it).

pub mod approvals;
pub mod audit;
pub mod callers;
pub mod follow;
pub mod freeze;
pub mod hooks;
pub mod policy;
pub mod previews;
pub mod projects;
pub mod releases;
pub mod schedules;
pub mod secrets;
pub mod statuses;
pub mod tasks;
pub mod users;
pub mod workers;
