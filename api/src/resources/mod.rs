//! One module per JSON:API resource: handlers (`mod.rs`), domain logic and storage
//! (`service.rs`), and the JSON:API view (`view.rs`).

pub mod configuration_versions;
pub mod organizations;
pub mod runs;
pub mod vcs_connections;
pub mod vcs_events;
pub mod workspaces;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// The constraint a unique violation tripped, if that is what `err` is.
pub(crate) fn unique_violation(err: &DieselError) -> Option<&str> {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            info.constraint_name()
        }
        _ => None,
    }
}
