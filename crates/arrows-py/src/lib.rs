//! The private module `arrows._arrows`: converts types between Python and arrows-core, releases
//! the GIL around every long call, and maps core errors onto the exceptions of `arrows.errors`.

use arrows_core::error::Error;
use arrows_core::manifest::hex;
use arrows_core::shard;
use arrows_core::store::Store;
use arrows_core::tokenize::{tokenize, Progress, TokenizeOptions, TokenizerSpec, CHUNK_BYTES};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Convert a core error into the matching Python exception.
fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let class = match &err {
        Error::Io { path, source } => {
            // OSError(errno, strerror, filename) becomes FileNotFoundError, PermissionError, ...
            let errno = source.raw_os_error().unwrap_or(0);
            return PyOSError::new_err((errno, source.to_string(), path.display().to_string()));
        }
        Error::Input(_) => "InputError",
        Error::InvalidUtf8 { .. } => "InvalidUtf8Error",
        Error::Tokenizer { .. } => "TokenizerError",
        Error::Corrupt { .. } => "CorruptDataError",
        Error::ResumeMismatch(_) => "ResumeMismatchError",
        Error::Cancelled => "CancelledError",
    };
    let message = err.to_string();
    match py.import("arrows.errors").and_then(|m| m.getattr(class)) {
        Ok(cls) => PyErr::from_value(cls.call1((message,)).unwrap_or_else(|e| e.into_value(py).into_bound(py).into_any())),
        Err(e) => e,
    }
}

fn core<T>(py: Python<'_>, r: arrows_core::Result<T>) -> PyResult<T> {
    r.map_err(|e| to_py(py, e))
}

/// A tokenization job. `run()` blocks (without the GIL) until done; another thread may poll
/// `progress()` and call `cancel()` meanwhile.
#[pyclass(frozen)]
struct TokenizeJob {
    options: TokenizeOptions,
    progress: Arc<Progress>,
}

#[pymethods]
impl TokenizeJob {
    #[new]
    #[pyo3(signature = (inputs, out, *, tokenizer="train", vocab_size=50257, sample_bytes=1_000_000_000, seed=0, min_frequency=2, threads=0, shard_bytes=128<<20, strict_utf8=false, resume=false, force=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        inputs: Vec<PathBuf>,
        out: PathBuf,
        tokenizer: &str,
        vocab_size: usize,
        sample_bytes: u64,
        seed: u64,
        min_frequency: u64,
        threads: usize,
        shard_bytes: u64,
        strict_utf8: bool,
        resume: bool,
        force: bool,
    ) -> Self {
        let tokenizer = match tokenizer {
            "train" => TokenizerSpec::Train { vocab_size, sample_bytes, seed, min_frequency },
            "bytes" => TokenizerSpec::Bytes,
            path => TokenizerSpec::File(PathBuf::from(path)),
        };
        let options = TokenizeOptions { inputs, out, tokenizer, threads, shard_bytes, chunk_bytes: CHUNK_BYTES, strict_utf8, resume, force };
        TokenizeJob { options, progress: Arc::new(Progress::default()) }
    }

    /// Run to the end; returns the summary as a dict.
    fn run<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let summary = py.detach(|| tokenize(&self.options, &self.progress));
        let s = core(py, summary)?;
        let d = PyDict::new(py);
        d.set_item("out", s.out.display().to_string())?;
        d.set_item("tokens", s.tokens)?;
        d.set_item("input_bytes", s.input_bytes)?;
        d.set_item("replaced_bytes", s.replaced_bytes)?;
        d.set_item("shards", s.shards)?;
        d.set_item("vocab_size", s.vocab_size)?;
        d.set_item("resumed_at", s.resumed_at)?;
        d.set_item("seconds", s.seconds)?;
        d.set_item("notes", s.notes)?;
        if let Some(t) = s.trained {
            let td = PyDict::new(py);
            td.set_item("sample_bytes", t.sample_bytes)?;
            td.set_item("distinct_words", t.distinct_words)?;
            td.set_item("merges", t.merges)?;
            td.set_item("seconds", s.train_seconds)?;
            d.set_item("trained", td)?;
        }
        Ok(d)
    }

    /// (phase, done, total, tokens, replaced_bytes); phase 0 starting, 1 counting the sample
    /// (bytes), 2 learning merges (merges), 3 encoding (bytes), 4 done.
    fn progress(&self) -> (u8, u64, u64, u64, u64) {
        let p = &self.progress;
        (p.phase.load(Relaxed), p.done.load(Relaxed), p.total.load(Relaxed), p.tokens.load(Relaxed), p.replaced_bytes.load(Relaxed))
    }

    /// Ask the job to stop; `run()` then raises CancelledError and the folder stays resumable.
    fn cancel(&self) {
        self.progress.cancel.store(true, Relaxed);
    }
}

/// Open a token store: returns (manifest JSON text, dtype name, [(shard path, token count)]).
#[pyfunction]
#[pyo3(signature = (dir, allow_incomplete=false))]
fn open_store(py: Python<'_>, dir: PathBuf, allow_incomplete: bool) -> PyResult<(String, String, Vec<(String, u64)>)> {
    let store = core(py, py.detach(|| Store::open(&dir, allow_incomplete)))?;
    let manifest = std::fs::read_to_string(dir.join(arrows_core::manifest::FILE_NAME)).map_err(|e| to_py(py, Error::io(&dir, e)))?;
    let shards = store.shards.iter().map(|s| (s.path.display().to_string(), s.header.count)).collect();
    Ok((manifest, store.dtype.name().to_string(), shards))
}

/// Check every shard's checksum; returns one message per damaged shard (empty: all good).
#[pyfunction]
fn verify_store(py: Python<'_>, dir: PathBuf) -> PyResult<Vec<String>> {
    let problems = py.detach(|| Store::open(&dir, true).map(|s| s.verify()));
    Ok(core(py, problems)?.into_iter().map(|e| e.to_string()).collect())
}

/// The header of one shard file, as a dict.
#[pyfunction]
fn read_shard_header<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let h = core(py, shard::read_header(&path))?;
    let d = PyDict::new(py);
    d.set_item("dtype", h.dtype.name())?;
    d.set_item("count", h.count)?;
    d.set_item("tokenizer_hash", hex(h.tokenizer_hash))?;
    d.set_item("checksum", hex(h.checksum))?;
    d.set_item("input_start", h.input_start)?;
    d.set_item("input_end", h.input_end)?;
    d.set_item("header_bytes", shard::HEADER_LEN)?;
    Ok(d)
}

#[pymodule]
fn _arrows(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TokenizeJob>()?;
    m.add_function(wrap_pyfunction!(open_store, m)?)?;
    m.add_function(wrap_pyfunction!(verify_store, m)?)?;
    m.add_function(wrap_pyfunction!(read_shard_header, m)?)?;
    m.add("SHARD_HEADER_BYTES", shard::HEADER_LEN)?;
    Ok(())
}
