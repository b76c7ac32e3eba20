//! Statements kept prepared on their connection, found again by their SQL text.
//!
//! diesel will not cache a prepared `UPDATE`, an `INSERT` of a struct with optional fields or
//! an `IN (...)` list: their text can change with the values, and a cache keyed by it could
//! grow without end. So each execution prepared the statement anew; on MySQL that is one more
//! round trip to the server before every write, and a close sent after it (MariaDB's general
//! log showed every write of a lifecycle prepared again). The store's statements take a
//! handful of texts each (an `IN` list holds a few of the engine's fixed states), so keeping
//! them by text keeps the cache small: about 20 more prepared statements per connection, which
//! a server's `max_prepared_stmt_count` must allow for.

use diesel::QueryResult;
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};

/// `Q`, cached by its SQL text and its binds' types (see the module's doc). Only for statements
/// whose text takes a few forms: never a list of caller-chosen length (such as the ids of
/// [`super::Store::heartbeat`]). diesel already caches what it can (reads, inserts of tuples).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cached<Q>(Q);

pub(super) trait CacheByText: Sized {
    fn cached(self) -> Cached<Self> {
        Cached(self)
    }
}

impl<Q> CacheByText for Q {}

impl<Q: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the key is the text, which differs where `Q`'s values change it.
impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;
    use diesel::sqlite::Sqlite;

    use super::*;
    use crate::store::schema::osb_bindings::dsl;

    #[test]
    fn a_write_diesel_would_prepare_again_is_cached_by_its_unchanged_text() {
        let from = vec!["bound", "binding"];
        let update = diesel::update(dsl::osb_bindings.filter(dsl::state.eq_any(&from)))
            .set(dsl::state.eq("unbinding"));
        assert!(!update.is_safe_to_cache_prepared(&Sqlite).unwrap());
        let text = diesel::debug_query::<Sqlite, _>(&update).to_string();
        let cached = update.cached();
        assert!(cached.is_safe_to_cache_prepared(&Sqlite).unwrap());
        assert!(
            Cached::<()>::query_id().is_none(),
            "keyed by text, not type"
        );
        assert_eq!(diesel::debug_query::<Sqlite, _>(&cached).to_string(), text);
    }
}
