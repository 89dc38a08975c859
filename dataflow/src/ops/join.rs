//! Equi-join (INNER and LEFT) over signed deltas.
//!
//! Each side keeps its rows with multiplicities, keyed by the SQL-equality key of its `on`
//! columns (rows with a NULL in them never match and are not kept). A delta on one side
//! joins with the *current* state of the other side, then updates its own state; processing
//! the left delta before the right one gives `ΔL⋈R + L'⋈ΔR`, the exact change, also when
//! both inputs are the same node (self-join). LEFT joins also emit a left row padded with
//! NULLs while its key has no right row, and retract that when the first match arrives.

use rustc_hash::FxHashMap;
use std::any::Any;
use std::collections::hash_map;

use larder_sql::plan::JoinKind;
use larder_sql::value::{Key, Row, Value};

use super::gate::Gate;
use super::join_stored::{bump_quiet, StoredSide};
use super::{bump, known, match_key, mem, Batch, Operator, Record, RowCounts};
use crate::order::OrdRow;
use crate::stored::{NoStoredRows, StoredError, StoredIndex, StoredRows};

/// The rows of one side that share a key.
#[derive(Debug, Default)]
struct KeyRows {
    rows: RowCounts,
    /// Sum of the multiplicities in `rows`.
    total: i64,
}

#[derive(Debug)]
pub struct JoinOp {
    kind: JoinKind,
    left_on: Vec<usize>,
    right_on: Vec<usize>,
    left_width: usize,
    right_width: usize,
    left: FxHashMap<Key, KeyRows>,
    right: FxHashMap<Key, KeyRows>,
    /// LEFT join only: left rows with a NULL in their `on` columns (they match nothing and
    /// are output padded with NULLs), kept so that [`Operator::current_output`] can list them.
    left_unmatchable: RowCounts,
    /// A side read from storage instead of kept in memory (see [`super::join_stored`]).
    stored: Option<StoredSide>,
    /// The changes received on the stored side during the transaction being applied (or,
    /// while the cache fills, since the fill's snapshot), by key; dropped at its end, when
    /// storage has them.
    overlay: FxHashMap<Key, KeyRows>,
    /// A partial cache's join (its other side stored): the side it keeps holds only the
    /// rows of the keys its reader holds (see [`super::gate`]).
    gate: Option<Gate>,
}

fn concat(l: &[Value], r: &[Value]) -> Row {
    let mut row = Vec::with_capacity(l.len() + r.len());
    row.extend_from_slice(l);
    row.extend_from_slice(r);
    row
}

/// Adds `diff` copies of `row` under `key`, dropping the key when nothing is left.
/// Returns the key's total before and after.
fn store(side: &mut FxHashMap<Key, KeyRows>, key: Key, row: Row, diff: i64) -> (i64, i64) {
    match side.entry(key) {
        hash_map::Entry::Occupied(mut o) => {
            let e = o.get_mut();
            let old = e.total;
            bump(&mut e.rows, row, diff);
            e.total = e.total.saturating_add(diff);
            let new = e.total;
            if e.rows.is_empty() && e.total == 0 {
                mem::charge(-(mem::key_bytes(o.key()) + mem::slot_bytes::<Key, KeyRows>()));
                o.remove();
            }
            (old, new)
        }
        hash_map::Entry::Vacant(v) => {
            let mut e = KeyRows::default();
            bump(&mut e.rows, row, diff);
            e.total = diff;
            if !e.rows.is_empty() {
                mem::charge(mem::key_bytes(v.key()) + mem::slot_bytes::<Key, KeyRows>());
                v.insert(e);
            }
            (0, diff)
        }
    }
}

static EMPTY: RowCounts = RowCounts::new();

/// Uncharges a side's state as it is dropped.
fn free_side(side: FxHashMap<Key, KeyRows>) {
    for (key, rows) in side {
        mem::charge(-(mem::key_bytes(&key) + mem::slot_bytes::<Key, KeyRows>()));
        free_rows(rows.rows);
    }
}

fn free_rows(rows: RowCounts) {
    mem::charge(-mem::counts_bytes::<OrdRow>(
        rows.keys().map(|r| r.0.as_slice()),
    ));
}

impl JoinOp {
    pub fn new(
        kind: JoinKind,
        on: &[(usize, usize)],
        left_width: usize,
        right_width: usize,
    ) -> JoinOp {
        assert!(
            !on.is_empty(),
            "plan validation guarantees a non-empty `on`"
        );
        JoinOp {
            kind,
            left_on: on.iter().map(|p| p.0).collect(),
            right_on: on.iter().map(|p| p.1).collect(),
            left_width,
            right_width,
            left: FxHashMap::default(),
            right: FxHashMap::default(),
            left_unmatchable: RowCounts::new(),
            stored: None,
            overlay: FxHashMap::default(),
            gate: None,
        }
    }

    /// Reads one side from storage from now on (set before the join sees any input).
    pub(crate) fn set_stored_side(&mut self, side: StoredSide) {
        debug_assert!(
            self.left.is_empty() && self.right.is_empty(),
            "a stored side is chosen before any input"
        );
        // A LEFT join's left rows without matches are output too: they must be listed
        // (`current_output`, padded) and so are kept in memory.
        debug_assert!(
            !(side.side == 0 && self.kind == JoinKind::Left),
            "a LEFT join's left side is never read from storage"
        );
        self.stored = Some(side);
    }

    /// The input read from storage, if any.
    fn stored_input(&self) -> Option<usize> {
        self.stored.as_ref().map(|s| s.side)
    }

    /// Rows of the stored side whose `on` columns equal those of `row` (a row of input
    /// `input`, whose `key` it is), as of the changes this join has received: storage
    /// before the transaction plus the overlay.
    fn stored_rows(
        &mut self,
        input: usize,
        row: &[Value],
        key: &Key,
        stored: &dyn StoredRows,
    ) -> Result<(RowCounts, i64), StoredError> {
        let values = self.lookup_values(input, row);
        let side = self
            .stored
            .as_mut()
            .expect("called only with a stored side");
        let own_on = if side.side == 0 {
            &self.left_on
        } else {
            &self.right_on
        };
        let mut rows = side.rows(stored, own_on, &values, None)?;
        if let Some(pending) = self.overlay.get(key) {
            for (r, &c) in &pending.rows {
                bump_quiet(&mut rows, r.0.clone(), c);
            }
        }
        let total = rows.values().fold(0i64, |t, &c| t.saturating_add(c));
        Ok((rows, total))
    }

    /// How many rows of the stored side match `key` (as [`stored_rows`](Self::stored_rows)
    /// counts them), or a number at least `enough` when there are more: storage stops
    /// reading there, and the overlay's rows are not copied. What a LEFT join needs to know
    /// whether a key has matches before and after a change.
    fn stored_total_at_least(
        &mut self,
        input: usize,
        row: &[Value],
        key: &Key,
        stored: &dyn StoredRows,
        enough: i64,
    ) -> Result<i64, StoredError> {
        let values = self.lookup_values(input, row);
        let pending = self.overlay.get(key).map_or(0, |p| p.total);
        let side = self
            .stored
            .as_mut()
            .expect("called only with a stored side");
        let own_on = if side.side == 0 {
            &self.left_on
        } else {
            &self.right_on
        };
        // The overlay may take rows away: read that many more.
        let enough = enough.saturating_add(pending.min(0).saturating_neg());
        let rows = side.rows(stored, own_on, &values, Some(enough))?;
        let total = rows.values().fold(0i64, |t, &c| t.saturating_add(c));
        Ok(total.saturating_add(pending))
    }

    /// The values of `row`'s `on` columns (a row of input `input`), to look the stored side
    /// up with.
    fn lookup_values(&self, input: usize, row: &[Value]) -> Vec<Value> {
        let on = if input == 0 {
            &self.left_on
        } else {
            &self.right_on
        };
        on.iter().map(|&c| row[c].clone()).collect()
    }

    /// The output of a row of input `input` whose matches storage could not give: unknown
    /// but for its own columns and the key, so the affected reader keys go upstream.
    fn unreadable(&self, input: usize, row: &[Value], diff: i64, e: &StoredError, out: &mut Batch) {
        tracing::error!(error = %e, "a join could not read its stored side; the affected keys are answered upstream");
        let known: Vec<Option<Value>> = row.iter().cloned().map(Some).collect();
        let mut side_out = Vec::new();
        self.poison(input, known, diff, &mut side_out);
        out.extend(side_out);
    }

    fn nulls(&self) -> Vec<Value> {
        vec![Value::Null; self.right_width]
    }

    fn left_row(&mut self, row: Row, diff: i64, out: &mut Batch, stored: &dyn StoredRows) {
        let Some(key) = match_key(&row, &self.left_on) else {
            if self.kind == JoinKind::Left {
                out.push(Record::Row {
                    row: concat(&row, &self.nulls()),
                    diff,
                });
                bump(&mut self.left_unmatchable, row, diff);
            }
            return;
        };
        let mut matched = false;
        if self.stored_input() == Some(1) {
            match self.stored_rows(0, &row, &key, stored) {
                Ok((rows, total)) => {
                    matched = total > 0;
                    for (r, &c) in &rows {
                        out.push(Record::Row {
                            row: concat(&row, &r.0),
                            diff: diff.saturating_mul(c),
                        });
                    }
                }
                Err(e) => {
                    // Its output is unknown; the row is kept all the same, so the state
                    // stays exact for the changes that follow.
                    self.unreadable(0, &row, diff, &e, out);
                    store(&mut self.left, key, row, diff);
                    return;
                }
            }
        } else if let Some(entry) = self.right.get(&key) {
            matched = entry.total > 0;
            for (r, &c) in &entry.rows {
                out.push(Record::Row {
                    row: concat(&row, &r.0),
                    diff: diff.saturating_mul(c),
                });
            }
        }
        if self.kind == JoinKind::Left && !matched {
            out.push(Record::Row {
                row: concat(&row, &self.nulls()),
                diff,
            });
        }
        if self.stored_input() == Some(0) {
            store(&mut self.overlay, key, row, diff);
        } else {
            store(&mut self.left, key, row, diff);
        }
    }

    fn right_row(&mut self, row: Row, diff: i64, out: &mut Batch, stored: &dyn StoredRows) {
        let Some(key) = match_key(&row, &self.right_on) else {
            return;
        };
        let left: Option<RowCounts> = if self.stored_input() == Some(0) {
            match self.stored_rows(1, &row, &key, stored) {
                Ok((rows, _)) => Some(rows),
                Err(e) => {
                    self.unreadable(1, &row, diff, &e, out);
                    store(&mut self.right, key, row, diff);
                    return;
                }
            }
        } else {
            None
        };
        let left_rows = || -> &RowCounts {
            match &left {
                Some(rows) => rows,
                None => self.left.get(&key).map_or(&EMPTY, |e| &e.rows),
            }
        };
        for (l, &c) in left_rows() {
            out.push(Record::Row {
                row: concat(&l.0, &row),
                diff: diff.saturating_mul(c),
            });
        }
        let (old, new) = if self.stored_input() == Some(1) {
            let old = if self.kind == JoinKind::Left {
                // Only whether the key has matches before and after matters: once the total
                // is past |diff|, both are "yes", whatever more storage holds.
                let enough = diff.saturating_abs().saturating_add(1);
                match self.stored_total_at_least(1, &row, &key, stored, enough) {
                    Ok(total) => total,
                    Err(e) => {
                        self.unreadable(1, &row, diff, &e, out);
                        store(&mut self.overlay, key, row, diff);
                        return;
                    }
                }
            } else {
                0
            };
            store(&mut self.overlay, key.clone(), row, diff);
            (old, old.saturating_add(diff))
        } else {
            store(&mut self.right, key.clone(), row, diff)
        };
        if self.kind == JoinKind::Left && (old > 0) != (new > 0) {
            let sign = if new > 0 { -1 } else { 1 };
            let nulls = self.nulls();
            let rows = match &left {
                Some(rows) => rows,
                None => self.left.get(&key).map_or(&EMPTY, |e| &e.rows),
            };
            for (l, &c) in rows {
                out.push(Record::Row {
                    row: concat(&l.0, &nulls),
                    diff: sign * c,
                });
            }
        }
    }

    /// A poison row on either side: the joined rows it may produce share its known columns
    /// and, through `on`, the other side's key columns.
    fn poison(&self, input: usize, row: Vec<Option<Value>>, diff: i64, out: &mut Batch) {
        let (own_on, other_on) = if input == 0 {
            (&self.left_on, &self.right_on)
        } else {
            (&self.right_on, &self.left_on)
        };
        let key = known(&row, own_on);
        let null_key = key.as_ref().is_some_and(|k| k.iter().any(Value::is_null));
        if null_key && !(input == 0 && self.kind == JoinKind::Left) {
            // Matches nothing, whatever the unknown columns are.
            return;
        }
        let other_width = if input == 0 {
            self.right_width
        } else {
            self.left_width
        };
        let mut other = vec![None; other_width];
        if let (Some(key), false) = (key, null_key) {
            for (&c, v) in other_on.iter().zip(key) {
                other[c] = Some(v);
            }
        }
        let row = if input == 0 {
            row.into_iter().chain(other).collect()
        } else {
            other.into_iter().chain(row).collect()
        };
        out.push(Record::Poison { row, diff });
    }
}

impl Operator for JoinOp {
    fn name(&self) -> &'static str {
        "join"
    }

    fn process(&mut self, input: usize, batch: Batch) -> Batch {
        self.process_stored(input, batch, &NoStoredRows, false)
    }

    fn process_stored(
        &mut self,
        input: usize,
        batch: Batch,
        stored: &dyn StoredRows,
        snapshot_rows: bool,
    ) -> Batch {
        let mut out = Vec::new();
        // The fill's snapshot rows of the stored side are what storage gives (the other
        // side's rows look them up); only their poison, which storage never gives, counts.
        let skip_rows = snapshot_rows && self.stored_input() == Some(input);
        // A row of the kept side whose key the reader does not hold is a hole's: dropped.
        let gate = self
            .gate
            .as_ref()
            .filter(|_| self.stored_input().is_some_and(|s| s != input));
        let batch: Batch = match gate {
            Some(g) => batch
                .into_iter()
                .filter(|r| !matches!(r, Record::Row { row, .. } if !g.holds_row(row)))
                .collect(),
            None => batch,
        };
        for record in batch {
            match record {
                Record::Row { .. } if skip_rows => {}
                Record::Row { row, diff } if input == 0 => {
                    self.left_row(row, diff, &mut out, stored)
                }
                Record::Row { row, diff } => self.right_row(row, diff, &mut out, stored),
                Record::Poison { row, diff } => self.poison(input, row, diff, &mut out),
            }
        }
        out
    }

    fn gate_slot(&mut self) -> Option<&mut Option<Gate>> {
        // Only a join reading its other side from storage keeps one side by key.
        self.stored.is_some().then_some(&mut self.gate)
    }

    /// Forgets the kept side's rows of `keys` (reader keys), in one pass over that side.
    fn forget_keys(&mut self, keys: &[Key]) {
        let (Some(gate), Some(stored)) = (&self.gate, self.stored_input()) else {
            return;
        };
        let keys: rustc_hash::FxHashSet<&Key> = keys.iter().collect();
        let side = if stored == 1 { &self.left } else { &self.right };
        let mut gone: Vec<(Key, Row, i64)> = Vec::new();
        for (on_key, entry) in side {
            for (row, &count) in &entry.rows {
                if keys.contains(&gate.key_of_row(&row.0)) {
                    gone.push((on_key.clone(), row.0.clone(), count));
                }
            }
        }
        let unmatchable: Vec<(Row, i64)> = self
            .left_unmatchable
            .iter()
            .filter(|(row, _)| stored == 1 && keys.contains(&gate.key_of_row(&row.0)))
            .map(|(row, &count)| (row.0.clone(), count))
            .collect();
        let side = if stored == 1 {
            &mut self.left
        } else {
            &mut self.right
        };
        for (on_key, row, count) in gone {
            store(side, on_key, row, -count);
        }
        for (row, count) in unmatchable {
            bump(&mut self.left_unmatchable, row, -count);
        }
    }

    fn stored_index(&self) -> Option<StoredIndex> {
        self.stored.as_ref().and_then(StoredSide::index)
    }

    fn end_txn(&mut self) {
        free_side(std::mem::take(&mut self.overlay));
    }

    fn reads_storage(&self) -> bool {
        self.stored.is_some()
    }

    fn list_output(&mut self, stored: &dyn StoredRows) -> Result<Option<Batch>, StoredError> {
        let Some(side) = self.stored_input() else {
            return Ok(self.current_output());
        };
        debug_assert!(self.overlay.is_empty(), "listed between transactions");
        // One probe row per key of the side in memory: every row under a key has its values.
        let kept = if side == 1 { &self.left } else { &self.right };
        let probes: Vec<(Key, Row)> = kept
            .iter()
            .filter_map(|(k, e)| Some((k.clone(), e.rows.keys().next()?.0.clone())))
            .collect();
        let probe_input = 1 - side;
        let nulls = self.nulls();
        let mut out = Vec::new();
        for (key, probe) in probes {
            let (found, total) = self.stored_rows(probe_input, &probe, &key, stored)?;
            let kept = if side == 1 { &self.left } else { &self.right };
            let Some(entry) = kept.get(&key) else {
                continue;
            };
            for (k, &kc) in &entry.rows {
                for (f, &fc) in &found {
                    let row = if side == 1 {
                        concat(&k.0, &f.0)
                    } else {
                        concat(&f.0, &k.0)
                    };
                    out.push(Record::Row {
                        row,
                        diff: kc.saturating_mul(fc),
                    });
                }
                if side == 1 && self.kind == JoinKind::Left && total <= 0 {
                    out.push(Record::Row {
                        row: concat(&k.0, &nulls),
                        diff: kc,
                    });
                }
            }
        }
        for (l, &c) in &self.left_unmatchable {
            out.push(Record::Row {
                row: concat(&l.0, &nulls),
                diff: c,
            });
        }
        Ok(Some(out))
    }

    fn current_output(&self) -> Option<Batch> {
        if self.stored.is_some() {
            return None;
        }
        let mut out = Vec::new();
        let nulls = self.nulls();
        for (key, left) in &self.left {
            let right = self.right.get(key);
            let matched = right.is_some_and(|r| r.total > 0);
            for (l, &lc) in &left.rows {
                for (r, &rc) in right.iter().flat_map(|r| &r.rows) {
                    out.push(Record::Row {
                        row: concat(&l.0, &r.0),
                        diff: lc.saturating_mul(rc),
                    });
                }
                if self.kind == JoinKind::Left && !matched {
                    out.push(Record::Row {
                        row: concat(&l.0, &nulls),
                        diff: lc,
                    });
                }
            }
        }
        for (l, &c) in &self.left_unmatchable {
            out.push(Record::Row {
                row: concat(&l.0, &nulls),
                diff: c,
            });
        }
        Some(out)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests;
