//! What `irctl` and `kubectl-ir` share: how a recovery's status and errors read for people,
//! and output for programs.

pub mod output;
pub mod status_view;
