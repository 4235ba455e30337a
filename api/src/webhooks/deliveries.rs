//! Delivery ids already handled, shared by every API replica through PostgreSQL, so a
//! redelivery queues nothing.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use terrapod_shared::db::schema::webhook_deliveries;
use terrapod_shared::domain::Provider;

/// How long a delivery id is remembered (a day, plus slack for clock skew).
const REMEMBER_HOURS: i64 = 25;

/// Records a delivery id; false when it was seen before.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    provider: Provider,
    id: &str,
) -> QueryResult<bool> {
    let inserted = diesel::insert_into(webhook_deliveries::table)
        .values((
            webhook_deliveries::provider.eq(provider),
            webhook_deliveries::delivery_id.eq(id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// Forgets a delivery whose polls could not be queued, so a redelivery is handled.
pub async fn release(
    conn: &mut AsyncPgConnection,
    provider: Provider,
    id: &str,
) -> QueryResult<()> {
    diesel::delete(webhook_deliveries::table.find((provider.as_str(), id)))
        .execute(conn)
        .await
        .map(drop)
}

/// Forgets delivery ids older than a day; returns how many went. Run in the
/// background, never in a request.
pub async fn purge(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    let before = Utc::now() - chrono::Duration::hours(REMEMBER_HOURS);
    diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::received_at.lt(before)))
        .execute(conn)
        .await
}
