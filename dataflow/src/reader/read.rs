//! The read path: the keys a read looks up (the cartesian product of its IN lists), the
//! rows of those keys in the read's order (merged across keys, or through a key's range
//! index), the residual, OFFSET and LIMIT, handed to the caller's sink.

use super::compact::KeyCode;
use super::state::Found;
use super::*;

/// One key combination of a read.
pub(super) struct Lookup<'p> {
    pub(super) key: Key,
    /// The key's bytes, as compact keys are found by.
    code: KeyCode,
    /// The key's values, when the reader computes rows of keys without rows or is partial.
    values: Vec<&'p Value>,
    /// `false` when a value is NULL: the combination matches no row.
    matchable: bool,
}

impl Lookup<'_> {
    fn key_values(&self) -> Vec<Value> {
        self.values.iter().map(|v| (*v).clone()).collect()
    }
}

/// The distinct keys a read must look up: the cartesian product of the key slots' values,
/// skipping combinations with a NULL (`col = NULL` never matches) unless the reader
/// computes a row for keys without rows.
pub(super) fn lookup_keys<'p>(
    spec: &ReadSpec,
    params: &'p [Vec<Value>],
) -> Result<Vec<Lookup<'p>>, ReadError> {
    let mut slots = Vec::with_capacity(spec.key_params.len());
    let mut combinations: usize = 1;
    for &slot in &spec.key_params {
        let values = params
            .get(slot)
            .ok_or(ReadError::Eval(crate::error::EvalError::ParamMissing(slot)))?;
        combinations = combinations.saturating_mul(values.len());
        slots.push(values.as_slice());
    }
    if combinations > spec.key_combinations_max {
        return Err(ReadError::TooManyKeys {
            combinations,
            max: spec.key_combinations_max,
        });
    }
    let keep_values = spec.empty_row.is_some() || spec.partial;
    let mut keys = Vec::with_capacity(combinations);
    let mut seen: FxHashSet<Key> = FxHashSet::default();
    let mut index = vec![0usize; slots.len()];
    for _ in 0..combinations {
        let values: Vec<&Value> = slots.iter().zip(&index).map(|(s, &i)| &s[i]).collect();
        let matchable = !values.iter().any(|v| v.is_null());
        if matchable || keep_values {
            let key = spec
                .collations
                .key(values.iter().copied())
                .ok_or(ReadError::Uncollatable)?;
            if combinations == 1 || seen.insert(key.clone()) {
                keys.push(Lookup {
                    code: KeyCode::of(&key),
                    key,
                    values: if keep_values { values } else { Vec::new() },
                    matchable,
                });
            }
        }
        // Advance the odometer (last slot fastest).
        for pos in (0..index.len()).rev() {
            index[pos] += 1;
            if index[pos] < slots[pos].len() {
                break;
            }
            index[pos] = 0;
        }
    }
    Ok(keys)
}

pub(super) fn read_state(
    spec: &ReadSpec,
    state: &ReaderState,
    keys: &[Lookup<'_>],
    params: &[Vec<Value>],
    sink: &mut RowSink<'_>,
) -> Result<u64, ReadError> {
    if !state.ready {
        return Err(ReadError::NotReady);
    }
    if state.poison_all != 0 {
        return Err(ReadError::Poisoned);
    }
    // The common hit: one key of one row, answered from its encoding without building rows
    // to merge.
    if let ([lookup], None) = (keys, &spec.range) {
        if let Some((count, row)) = lookup
            .matchable
            .then(|| state.compact_row(&lookup.code))
            .flatten()
        {
            let mut out = Collector::new(spec, params, sink);
            out.offer(&row, count)?;
            return Ok(out.rows);
        }
    }
    // Per key: its rows in the state, or (index into `computed`) its computed row.
    let mut found: Vec<Result<&KeyRows, usize>> = Vec::with_capacity(keys.len());
    let mut computed: Vec<KeyRows> = Vec::new();
    if state.partial {
        let holes: Vec<Vec<Value>> = keys
            .iter()
            .filter(|l| l.matchable && !state.holds_code(&l.key, &l.code))
            .map(|l| l.key_values())
            .collect();
        if !holes.is_empty() {
            return Err(ReadError::Holes(holes));
        }
    }
    for lookup in keys {
        let entry = match lookup.matchable {
            true => state.find(&lookup.key, &lookup.code),
            false => None,
        };
        // A partial reader's filled key without rows reads as a key without rows.
        let entry = entry.filter(|f| {
            let rows = f.rows();
            !rows.rows.is_empty() || rows.is_poisoned()
        });
        match (entry, &spec.empty_row) {
            (Some(Found::Rows(entry)), _) if entry.is_poisoned() => {
                return Err(ReadError::Poisoned)
            }
            (Some(Found::Rows(entry)), _) => found.push(Ok(entry)),
            (Some(Found::Compact(entry)), _) => {
                found.push(Err(computed.len()));
                computed.push(entry);
            }
            (None, Some(empty)) => {
                let row = SortedRow {
                    order: Arc::clone(&spec.order),
                    row: empty.row(&lookup.values)?.into(),
                };
                found.push(Err(computed.len()));
                computed.push(KeyRows::single(row));
            }
            (None, None) => {}
        }
    }
    let sources: Vec<&KeyRows> = found
        .into_iter()
        .map(|f| f.unwrap_or_else(|i| &computed[i]))
        .collect();
    let mut out = Collector::new(spec, params, sink);
    if let Some(range) = &spec.range {
        match range.visit(params) {
            Visit::Everything => {}
            Visit::Nothing => return Ok(out.rows),
            Visit::Range(lower, upper) => {
                read_range(spec, range, &sources, (lower, upper), &mut out)?;
                return Ok(out.rows);
            }
        }
    }
    if spec.order.is_empty() || sources.len() <= 1 {
        'all: for src in &sources {
            for (row, &count) in &src.rows {
                if !out.offer(&row.row, count)? {
                    break 'all;
                }
            }
        }
    } else {
        merge_sorted(&sources, &mut out)?;
    }
    Ok(out.rows)
}

/// A range read: only the keys' rows whose indexed value is within `bounds`, in the read's
/// order. One key ordered by the indexed column streams straight from the index (stopping at
/// the limit); otherwise the rows in range are sorted first.
fn read_range(
    spec: &ReadSpec,
    range: &RangeRead,
    sources: &[&KeyRows],
    bounds: (std::ops::Bound<RangeValue>, std::ops::Bound<RangeValue>),
    out: &mut Collector<'_, '_>,
) -> Result<(), ReadError> {
    let count = |src: &KeyRows, row: &SortedRow| src.rows.get(row);
    let first = spec.order.first();
    let none = RangeRows::default();
    if let ([src], Some(first)) = (sources, first) {
        if first.column == range.column && range_of(src, &none).unplaced.is_empty() {
            let buckets = range_of(src, &none).index.range(bounds);
            let mut offer = |set: &BTreeSet<SortedRow>| -> Result<bool, ReadError> {
                for row in set {
                    if !out.offer(&row.row, count(src, row))? {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            if first.descending {
                for (_, set) in buckets.rev() {
                    if !offer(set)? {
                        break;
                    }
                }
            } else {
                for (_, set) in buckets {
                    if !offer(set)? {
                        break;
                    }
                }
            }
            return Ok(());
        }
    }
    let mut rows: Vec<(&SortedRow, i64)> = Vec::new();
    for src in sources {
        for (_, set) in range_of(src, &none).index.range(bounds.clone()) {
            rows.extend(set.iter().map(|r| (r, count(src, r))));
        }
        rows.extend(
            range_of(src, &none)
                .unplaced
                .iter()
                .map(|r| (r, count(src, r))),
        );
    }
    if !spec.order.is_empty() {
        rows.sort_by(|a, b| a.0.cmp(b.0));
    }
    for (row, n) in rows {
        if !out.offer(&row.row, n)? {
            break;
        }
    }
    Ok(())
}

/// Applies residual, offset, limit and output projection to rows offered in final order.
struct Collector<'a, 's> {
    spec: &'a ReadSpec,
    params: &'a [Vec<Value>],
    skip: usize,
    remaining: usize,
    /// Rows handed to `sink` so far.
    rows: u64,
    sink: &'a mut RowSink<'s>,
}

impl<'a, 's> Collector<'a, 's> {
    fn new(spec: &'a ReadSpec, params: &'a [Vec<Value>], sink: &'a mut RowSink<'s>) -> Self {
        Collector {
            spec,
            params,
            skip: spec.offset,
            remaining: spec.limit.unwrap_or(usize::MAX),
            rows: 0,
            sink,
        }
    }

    /// Offers `count` copies of a row; returns `false` once the limit is reached.
    fn offer(&mut self, row: &[Value], count: i64) -> Result<bool, ReadError> {
        if self.remaining == 0 {
            return Ok(false);
        }
        if count <= 0 {
            return Ok(true);
        }
        if let Some(residual) = &self.spec.residual {
            if residual.eval_predicate(row, self.params)? != Some(true) {
                return Ok(true);
            }
        }
        let mut copies = usize::try_from(count).unwrap_or(usize::MAX);
        let skipped = copies.min(self.skip);
        self.skip -= skipped;
        copies -= skipped;
        let take = copies.min(self.remaining);
        for _ in 0..take {
            (self.sink)(row, &self.spec.output).map_err(ReadError::Sink)?;
            self.rows += 1;
        }
        self.remaining -= take;
        Ok(self.remaining > 0)
    }
}

/// Head of one key's sorted rows inside the k-way merge (a min-heap via reversed order).
struct Head<'a> {
    row: &'a SortedRow,
    count: i64,
    source: usize,
}

impl PartialEq for Head<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head<'_> {}

impl PartialOrd for Head<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .row
            .cmp(self.row)
            .then_with(|| other.source.cmp(&self.source))
    }
}

/// Merges the keys' already sorted rows, stopping as soon as the limit is reached.
fn merge_sorted(sources: &[&KeyRows], out: &mut Collector<'_, '_>) -> Result<(), ReadError> {
    let mut iters: Vec<_> = sources.iter().map(|s| s.rows.iter()).collect();
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (source, it) in iters.iter_mut().enumerate() {
        if let Some((row, &count)) = it.next() {
            heap.push(Head { row, count, source });
        }
    }
    while let Some(head) = heap.pop() {
        if !out.offer(&head.row.row, head.count)? {
            break;
        }
        if let Some((row, &count)) = iters[head.source].next() {
            heap.push(Head {
                row,
                count,
                source: head.source,
            });
        }
    }
    Ok(())
}
