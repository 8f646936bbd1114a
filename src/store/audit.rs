//! The invariant audit of one sale, using the statement embedded from `stress/invariants.sql`
//! so the route and the psql check can never disagree.

use sqlx::FromRow;

use super::{Store, StoreError};

const INVARIANTS_FILE: &str = include_str!("../../stress/invariants.sql");
const BEGIN_MARKER: &str = "-- flashsale:audit:begin";
const END_MARKER: &str = "-- flashsale:audit:end";

/// One invariant: its name, whether it holds, and the numbers behind the verdict.
#[derive(Debug, Clone, FromRow)]
pub struct AuditCheck {
    pub check_name: String,
    pub passed: bool,
    pub detail: String,
}

/// Every check for one sale.
#[derive(Debug, Clone)]
pub struct AuditReport {
    pub checks: Vec<AuditCheck>,
}

impl AuditReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }
}

/// The audit statement between the markers of `stress/invariants.sql`.
pub fn audit_statement() -> &'static str {
    let start = INVARIANTS_FILE
        .find(BEGIN_MARKER)
        .map(|at| at + BEGIN_MARKER.len());
    let end = INVARIANTS_FILE.find(END_MARKER);
    match (start, end) {
        (Some(start), Some(end)) if start < end => INVARIANTS_FILE[start..end].trim(),
        // A unit test keeps the markers in place; an empty statement would fail loudly.
        _ => "",
    }
}

impl Store {
    /// Runs the invariant checks for the sale with this id (archived ones too), in a
    /// transaction of its own so every check reads one snapshot.
    pub async fn audit_sale(&self, sale_id: uuid::Uuid) -> Result<AuditReport, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT set_config('flashsale.audit_sale', $1, true)")
            .bind(sale_id.to_string())
            .execute(&mut *tx)
            .await?;
        // No JIT: the statement is large and runs once, so compiling it never pays. A sale
        // with 200,000 queue entries crosses `jit_above_cost`: JIT took 1.5 s of a 1.65 s
        // audit (80 ms without), and under load past the 5 s statement timeout.
        sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
        // The statement is this crate's own file, embedded at compile time.
        let checks = sqlx::query_as::<_, AuditCheck>(sqlx::AssertSqlSafe(audit_statement()))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(AuditReport { checks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_statement_is_found_between_the_markers() {
        let sql = audit_statement();
        assert!(sql.starts_with("WITH sale AS"), "{sql}");
        assert!(sql.ends_with("ORDER BY ord"), "{sql}");
    }
}
