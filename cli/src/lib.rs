//! What `irctl` and `kubectl-ir` share: how a recovery's status and errors read for people,
//! and output for programs; the local driver of the engine behind `irctl recover` ([`local`]);
//! and `irctl mount` with the repository flags ([`mount`], [`repo_args`]), which the local
//! driver starts its mount with.

pub mod local;
pub mod mount;
pub mod output;
pub mod point_in_time;
pub mod repo_args;
pub mod status_view;
