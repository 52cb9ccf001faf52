//! What `irctl` and `kubectl-ir` share: how a recovery's status and errors read for people,
//! and output for programs; and the local driver of the engine behind `irctl recover`
//! ([`local`]).

pub mod local;
pub mod output;
pub mod status_view;
