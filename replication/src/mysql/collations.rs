//! Collations from the upstream: which collation each column compares by, and the weights of
//! every character under one (`WEIGHT_STRING` of each code point of the Basic Multilingual
//! Plane), so caches key text exactly as the server compares it ([`larder_sql::collation`]).
//! A table is fetched once per collation and kept for the life of the source: a server's
//! collations do not change while it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use larder_sql::collation::{charset_of, Collation, CollationError, TABLE_CODE_POINTS};
use mysql_async::prelude::Queryable;

use super::source::my_err;
use super::MySource;
use crate::error::ReplicationError;

/// Weight tables by collation name.
pub(crate) type Fetched = Arc<Mutex<HashMap<String, Arc<Collation>>>>;

/// Tables kept at most (each is about 300 KB).
const FETCHED_MAX: usize = 16;

/// The code points 0..`TABLE_CODE_POINTS` as a derived table `s(n)`, without surrogates, on
/// MySQL and MariaDB alike (no sequence engine, no recursion limit).
fn code_points(below: u32) -> String {
    let digits = (0..16)
        .map(|d| format!("SELECT {d} AS d"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "(SELECT a.d + 16 * b.d + 256 * c.d + 4096 * e.d AS n \
         FROM ({digits}) a, ({digits}) b, ({digits}) c, ({digits}) e) s \
         WHERE n < {below} AND (n < 55296 OR n > 57343)"
    )
}

impl MySource {
    /// The collation of each text column of `database`.`table` (column name -> collation).
    pub async fn column_collations(
        &self,
        database: &str,
        table: &str,
    ) -> Result<HashMap<String, String>, ReplicationError> {
        let (database, table) = (database.to_string(), table.to_string());
        let rows: Vec<(String, String)> = self
            .on_control(move |conn| {
                Box::pin(async move {
                    conn.exec(
                        "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
                         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLLATION_NAME IS NOT NULL",
                        (database, table),
                    )
                    .await
                    .map_err(my_err("reading column collations"))
                })
            })
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// How the upstream compares text under collation `name`; the table is asked for once.
    /// Refused for collations [`Collation::supported`] does not accept.
    pub async fn collation(&self, name: &str) -> Result<Arc<Collation>, ReplicationError> {
        Collation::supported(name)?;
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(CollationError::Unsupported(name.to_string()).into());
        }
        if let Some(c) = self.fetched().get(name) {
            return Ok(Arc::clone(c));
        }
        let collation = if Collation::is_binary(name) {
            Collation::code_point(name)?
        } else {
            let charset = charset_of(name).to_string();
            // ASCII columns hold only ASCII; a parameter beyond it is compared upstream.
            let below = if charset.eq_ignore_ascii_case("ascii") {
                128
            } else {
                TABLE_CODE_POINTS
            };
            let sql = format!(
                "SELECT n, WEIGHT_STRING(CONVERT(CHAR(n USING utf32) USING {charset}) COLLATE {name}) \
                 FROM {}",
                code_points(below)
            );
            let rows: Vec<(u32, Option<Vec<u8>>)> = self
                .on_control(move |conn| {
                    Box::pin(async move {
                        conn.query(sql)
                            .await
                            .map_err(my_err("reading a collation's weights"))
                    })
                })
                .await?;
            let weights = rows.into_iter().filter_map(|(n, w)| Some((n, w?)));
            Collation::from_weights(name, weights)?
        };
        let collation = Arc::new(collation);
        let mut fetched = self.fetched();
        if fetched.len() >= FETCHED_MAX {
            fetched.clear();
        }
        fetched.insert(name.to_string(), Arc::clone(&collation));
        tracing::info!(
            collation = name,
            size_bytes = collation.size_bytes(),
            "read a collation's weights from the upstream"
        );
        Ok(collation)
    }

    fn fetched(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Collation>>> {
        self.collations.lock().unwrap_or_else(|e| e.into_inner())
    }
}
