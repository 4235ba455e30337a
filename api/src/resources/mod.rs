//! One module per JSON:API resource: handlers (`mod.rs`), domain logic and storage
//! (`service.rs`), and the JSON:API view (`view.rs`).

pub mod configuration_versions;
pub mod organizations;
pub mod runs;
pub mod vcs_connections;
pub mod vcs_events;
pub mod workspaces;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// A condition written into the statement as SQL text the program chose (never text
/// from a request), for where a plan must see a value rather than a bind parameter:
/// the API's sessions use generic plans (`db::api_pool`). The statement stays prepared
/// and cached by its text. (`diesel::dsl::sql` would do, but marks the statement
/// unsafe to prepare: it would be planned afresh for every request.)
#[derive(Debug)]
pub(crate) struct FixedCondition(pub std::borrow::Cow<'static, str>);

impl diesel::Expression for FixedCondition {
    type SqlType = diesel::sql_types::Bool;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for FixedCondition {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.push_sql(&self.0);
        Ok(())
    }
}

impl diesel::query_builder::QueryId for FixedCondition {
    type QueryId = ();
    // Texts differ: cached by the statement's SQL, not by its type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::expression::ValidGrouping<()> for FixedCondition {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl<QS> diesel::AppearsOnTable<QS> for FixedCondition {}

/// The constraint a unique violation tripped, if that is what `err` is.
pub(crate) fn unique_violation(err: &DieselError) -> Option<&str> {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            info.constraint_name()
        }
        _ => None,
    }
}
