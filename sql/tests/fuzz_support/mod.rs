//! Shared harness of Larder's fuzz targets (bolero on stable Rust, run by plain `cargo test`).
//!
//! One copy lives here; `adapter/tests/fuzz.rs` and `replication/tests/fuzz.rs` include it with
//! `#[path = "../../sql/tests/fuzz_support/mod.rs"]`.
//!
//! * Time budget: [`FUZZ_SECONDS_ENV`] (`LARDER_FUZZ_SECONDS`) seconds of random inputs per
//!   target, [`FUZZ_SECONDS_DEFAULT`] by default so CI stays fast.
//!   (`BOLERO_RANDOM_TEST_TIME_MS` / `BOLERO_RANDOM_ITERATIONS` / `BOLERO_RANDOM_SEED` still
//!   work and take precedence.)
//! * Saved corpus: `<crate>/tests/__fuzz__/<target>/corpus/` (bolero's own layout), replayed by
//!   bolero before the random inputs. Under `cargo test` bolero generates inputs at random but
//!   does not mutate the corpus, so [`Harness::run`] also feeds every input as a list of
//!   mutations applied to one of the saved seeds: random inputs then start from deep, valid
//!   messages instead of from noise.
//! * Hangs: a watchdog aborts the process, printing the input, when one input runs longer than
//!   [`INPUT_TIME_MAX_SECS`].
//! * Panics on a mutated seed print the mutated bytes before bolero reports the failure.

#![allow(dead_code)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds of random inputs per target.
pub const FUZZ_SECONDS_ENV: &str = "LARDER_FUZZ_SECONDS";
/// Default per-target budget under plain `cargo test`.
pub const FUZZ_SECONDS_DEFAULT: f64 = 3.0;
/// Longest generated input.
pub const INPUT_LEN_MAX_BYTES: usize = 4096;
/// Most mutations applied to a seed per input.
pub const MUTATIONS_MAX: usize = 16;
/// Longest a single input may run before it counts as a hang.
pub const INPUT_TIME_MAX_SECS: u64 = 20;

/// The per-target time budget.
pub fn time_budget() -> Duration {
    let secs = std::env::var(FUZZ_SECONDS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(FUZZ_SECONDS_DEFAULT);
    Duration::from_secs_f64(secs)
}

/// `<crate>/tests/__fuzz__/<target>/corpus`, where bolero replays saved inputs from.
pub fn corpus_dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir)
        .join("tests")
        .join("__fuzz__")
        .join(target)
        .join("corpus")
}

/// Every file of a corpus directory, sorted by name (empty if the directory is missing).
pub fn load_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| std::fs::read(p).expect("readable corpus file"))
        .collect()
}

/// A seed to save: file name and content.
pub type Seed = (String, Vec<u8>);

/// Writes `seeds` into the target's corpus directory (used by the `#[ignore]`d
/// `write_seed_corpus` tests).
pub fn write_seeds(manifest_dir: &str, target: &str, seeds: &[Seed]) {
    let dir = corpus_dir(manifest_dir, target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}

/// Asserts every generated seed is saved, byte for byte, in the target's corpus directory.
pub fn assert_seeds_saved(manifest_dir: &str, target: &str, seeds: &[Seed]) {
    let dir = corpus_dir(manifest_dir, target);
    assert!(!seeds.is_empty(), "{target}: no seeds generated");
    for (name, bytes) in seeds {
        let saved = std::fs::read(dir.join(name)).unwrap_or_default();
        assert!(
            &saved == bytes,
            "{target}: seed {name} is missing or stale in {}; regenerate with \
             `cargo test --test fuzz -- --ignored write_seed_corpus`",
            dir.display()
        );
    }
}

/// Applies the mutations encoded in `ops` (3 bytes each: kind, position, value) to `seed`.
/// Deterministic, so a failing input is reproducible from the saved corpus plus `ops`.
pub fn mutate(seed: &[u8], ops: &[u8]) -> Vec<u8> {
    const INTERESTING_I32: [i32; 10] = [0, 1, -1, 4, 5, 0x7f, 0xffff, i32::MAX, i32::MIN, 0x7fff];
    let mut out = seed.to_vec();
    for op in ops.chunks(3) {
        let [kind, pos, val] = [
            op[0],
            op.get(1).copied().unwrap_or(0),
            op.get(2).copied().unwrap_or(0),
        ];
        let at = |len: usize| {
            if len == 0 {
                0
            } else {
                pos as usize * len / 256
            }
        };
        match kind % 8 {
            0 if !out.is_empty() => {
                let i = at(out.len());
                out[i] ^= 1 << (val % 8);
            }
            1 if !out.is_empty() => {
                let i = at(out.len());
                out[i] = val;
            }
            2 => {
                let i = at(out.len() + 1);
                out.insert(i, val);
            }
            3 if !out.is_empty() => {
                let i = at(out.len());
                out.remove(i);
            }
            4 if out.len() >= 4 => {
                let i = at(out.len() - 3);
                let v = INTERESTING_I32[val as usize % INTERESTING_I32.len()];
                out[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
            5 if out.len() >= 2 => {
                let i = at(out.len() - 1);
                let v = INTERESTING_I32[val as usize % INTERESTING_I32.len()] as u16;
                out[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            6 => out.truncate(at(out.len() + 1)),
            7 if !out.is_empty() && out.len() < INPUT_LEN_MAX_BYTES => {
                // Duplicate a slice (repeats a field or a whole message).
                let i = at(out.len());
                let n = (val as usize % 32 + 1).min(out.len() - i);
                let piece = out[i..i + n].to_vec();
                out.splice(i..i, piece);
            }
            _ => {}
        }
    }
    out
}

/// Runs one fuzz target's inputs: the raw input, then the input as mutations of a seed.
pub struct Harness {
    target: &'static str,
    seeds: Vec<Vec<u8>>,
    runs: AtomicU64,
    started: Instant,
    watchdog: Arc<Watchdog>,
}

struct Watchdog {
    last_tick_ms: AtomicU64,
    done: AtomicBool,
    input: Mutex<Vec<u8>>,
    epoch: Instant,
}

impl Harness {
    pub fn new(manifest_dir: &str, target: &'static str) -> Harness {
        let seeds = load_seeds(&corpus_dir(manifest_dir, target));
        let watchdog = Arc::new(Watchdog {
            last_tick_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
            input: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        });
        let w = Arc::clone(&watchdog);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            if w.done.load(Ordering::Relaxed) {
                return;
            }
            let now = w.epoch.elapsed().as_millis() as u64;
            let last = w.last_tick_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) > INPUT_TIME_MAX_SECS * 1000 {
                let input = w.input.lock().map(|i| i.clone()).unwrap_or_default();
                eprintln!(
                    "fuzz target {target}: one input ran longer than {INPUT_TIME_MAX_SECS} s \
                     (hang); input ({} bytes): b\"{}\"",
                    input.len(),
                    escape(&input)
                );
                std::process::abort();
            }
        });
        Harness {
            target,
            seeds,
            runs: AtomicU64::new(0),
            started: Instant::now(),
            watchdog,
        }
    }

    /// Number of saved seeds found.
    pub fn seed_count(&self) -> usize {
        self.seeds.len()
    }

    /// Runs `f` on `input` and, if the target has seeds, on a seed mutated by `input`: byte 0
    /// picks the seed, byte 1 the number of mutations, the rest are the mutations.
    pub fn run(&self, input: &[u8], f: impl Fn(&[u8])) {
        self.one(input, &f);
        if let [pick, count, ops @ ..] = input {
            if !self.seeds.is_empty() {
                let seed = &self.seeds[*pick as usize % self.seeds.len()];
                // A few mutations keep the input close to a valid one (deep paths); many
                // mutations shred it (the raw input above covers noise).
                let ops_len = (1 + *count as usize % MUTATIONS_MAX) * 3;
                let mutated = mutate(seed, &ops[..ops.len().min(ops_len)]);
                self.one(&mutated, &f);
            }
        }
    }

    fn one(&self, input: &[u8], f: &impl Fn(&[u8])) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.watchdog.input.lock() {
            slot.clear();
            slot.extend_from_slice(input);
        }
        self.watchdog.last_tick_ms.store(
            self.watchdog.epoch.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(input))) {
            eprintln!(
                "fuzz target {}: failing input ({} bytes): b\"{}\"",
                self.target,
                input.len(),
                escape(input)
            );
            resume_unwind(panic);
        }
    }

    /// Prints how many inputs ran (to stderr; visible with `--nocapture`).
    pub fn report(&self) {
        eprintln!(
            "fuzz target {}: {} inputs ({} saved seeds) in {:.1} s",
            self.target,
            self.runs.load(Ordering::Relaxed),
            self.seeds.len(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.watchdog.done.store(true, Ordering::Relaxed);
    }
}

/// Bytes as a Rust byte-string literal body, for pasting into a regression test.
pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Runs a fuzz target: `fuzz_target!("name", |input: &[u8]| { ... })`.
#[macro_export]
macro_rules! fuzz_target {
    ($name:literal, $body:expr) => {{
        let harness = fuzz_support::Harness::new(env!("CARGO_MANIFEST_DIR"), $name);
        bolero::check!(name = $name)
            .with_test_time(fuzz_support::time_budget())
            .with_max_len(fuzz_support::INPUT_LEN_MAX_BYTES)
            .for_each(|input: &[u8]| harness.run(input, $body));
        harness.report();
    }};
}

/// Structured values from fuzz bytes: each call consumes a few bytes; an exhausted input
/// yields zeros, so every input gives a value.
pub struct Gen<'a> {
    b: &'a [u8],
}

impl<'a> Gen<'a> {
    pub fn new(b: &'a [u8]) -> Gen<'a> {
        Gen { b }
    }

    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.b.split_first() {
            Some((&x, rest)) => {
                self.b = rest;
                x
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for x in &mut a {
            *x = self.u8();
        }
        a
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn i16(&mut self) -> i16 {
        i16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.array())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub fn uuid(&mut self) -> [u8; 16] {
        self.array()
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.u16() as usize % n
    }

    /// Up to `max` raw bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.u8() as usize).min(max).min(self.b.len());
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        head.to_vec()
    }

    /// A string of up to `max` bytes, any Unicode, never containing NUL.
    pub fn string(&mut self, max: usize) -> String {
        let raw = self.bytes(max);
        String::from_utf8_lossy(&raw).replace('\0', "\u{1}")
    }
}
