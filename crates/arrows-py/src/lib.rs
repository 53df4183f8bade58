//! The private module `arrows._arrows`: converts types between Python and arrows-core, releases
//! the GIL around every long call, and maps core errors onto the exceptions of `arrows.errors`.

use arrows_core::error::Error;
use arrows_core::manifest::hex;
use arrows_core::shard;
use arrows_core::store::Store;
use arrows_core::tokenize::{tokenize, Progress, TokenizeOptions, TokenizerSpec, CHUNK_BYTES};
use arrows_core::prefetch::{Lease, Prefetcher};
use arrows_core::source::{IdType, TokenSource};
use arrows_core::windows::{Order, Sampler, SamplerOptions, Split};
use pyo3::exceptions::{PyOSError, PyValueError};
use std::os::raw::c_int;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;
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
        Error::BatchSize(_) => "BatchSizeError",
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
    #[pyo3(signature = (inputs, out, *, tokenizer="train", vocab_size=50257, sample_bytes=1_000_000_000, seed=0, min_frequency=2, threads=0, shard_bytes=128<<20, strict_utf8=false, resume=false, force=false, bos=None))]
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
        bos: Option<String>,
    ) -> Self {
        let tokenizer = match tokenizer {
            "train" => TokenizerSpec::Train { vocab_size, sample_bytes, seed, min_frequency },
            "bytes" => TokenizerSpec::Bytes,
            path => TokenizerSpec::File(PathBuf::from(path)),
        };
        let options = TokenizeOptions { inputs, out, tokenizer, threads, shard_bytes, chunk_bytes: CHUNK_BYTES, strict_utf8, resume, force, bos };
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
        d.set_item("encode_seconds", s.encode_seconds)?;
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

/// What `open_store` returns: (manifest JSON text, dtype name, [(shard path, token count)]).
type OpenedStore = (String, String, Vec<(String, u64)>);

/// Open a token store (see `OpenedStore`).
#[pyfunction]
#[pyo3(signature = (dir, allow_incomplete=false))]
fn open_store(py: Python<'_>, dir: PathBuf, allow_incomplete: bool) -> PyResult<OpenedStore> {
    let store = core(py, py.detach(|| Store::open(&dir, allow_incomplete)))?;
    // The manifest the shards were checked against, not the file read again: `arrows tokenize`
    // replaces it after every shard, and a second read listed shards (or a completion) that the
    // shards returned did not have (1 open in 16 while a store was being written).
    let manifest = serde_json::to_string(&store.manifest).expect("a manifest serializes");
    let shards = store.shards.iter().map(|s| (s.path.display().to_string(), s.header.count)).collect();
    Ok((manifest, store.dtype.name().to_string(), shards))
}

/// Check every shard's checksum; returns one message per damaged shard (empty: all good).
#[pyfunction]
fn verify_store(py: Python<'_>, dir: PathBuf) -> PyResult<Vec<String>> {
    let problems = py.detach(|| Store::verify_folder(&dir));
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

/// The Rust half of `arrows.data.WindowLoader`: a sampler and its background prefetcher.
#[pyclass(frozen)]
struct LoaderCore {
    sampler: Arc<Sampler>,
    threads: usize,
    buffers: usize,
    prefetcher: Mutex<Option<Prefetcher>>,
}

#[pymethods]
impl LoaderCore {
    /// `source`: ("store", dir) or ("raw", path, byte offset, count, id type) for an h5 dataset.
    /// `order`: "forward", "backward" or a permutation of range(attn_length).
    #[new]
    #[pyo3(signature = (source, *, attn_length, batch_size, order, split, valid_tokens, stride, seed, shuffle, rank, world_size, drop_last, bos_id, vocab_size, threads, buffers))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        attn_length: usize,
        batch_size: usize,
        order: &Bound<'_, PyAny>,
        split: &str,
        valid_tokens: u64,
        stride: usize,
        seed: u64,
        shuffle: bool,
        rank: usize,
        world_size: usize,
        drop_last: bool,
        bos_id: i64,
        vocab_size: Option<u64>,
        threads: usize,
        buffers: usize,
    ) -> PyResult<Self> {
        let kind: String = source.get_item(0)?.extract()?;
        let src = match kind.as_str() {
            "store" => {
                let dir: PathBuf = source.get_item(1)?.extract()?;
                let mut s = core(py, py.detach(|| TokenSource::from_store(&dir)))?;
                if vocab_size.is_some() {
                    s.vocab_size = vocab_size;
                }
                s
            }
            "raw" => {
                let (_, path, offset, count, ids): (String, PathBuf, u64, u64, String) = source.extract()?;
                let ids = IdType::from_name(&ids).ok_or_else(|| PyValueError::new_err(format!("unsupported id type {ids}")))?;
                core(py, TokenSource::from_raw(&path, offset, count, ids, vocab_size))?
            }
            other => return Err(PyValueError::new_err(format!("unknown source kind {other}"))),
        };
        let order = if let Ok(name) = order.extract::<String>() {
            match name.as_str() {
                "forward" => Order::Forward,
                "backward" => Order::Backward,
                _ => return Err(PyValueError::new_err(format!("order must be 'forward', 'backward' or a permutation, not {name:?}"))),
            }
        } else {
            Order::Permuted(order.extract()?)
        };
        let split = match split {
            "train" => Split::Train,
            "valid" => Split::Valid,
            other => return Err(PyValueError::new_err(format!("split must be 'train' or 'valid', not {other:?}"))),
        };
        let opts = SamplerOptions { attn_length, batch_size, order, split, valid_tokens, stride, seed, shuffle, rank, world_size, drop_last, bos_id };
        let sampler = core(py, Sampler::new(Arc::new(src), opts))?;
        Ok(LoaderCore { sampler: Arc::new(sampler), threads, buffers, prefetcher: Mutex::new(None) })
    }

    #[getter]
    fn windows(&self) -> u64 {
        self.sampler.windows()
    }

    #[getter]
    fn batches_per_epoch(&self) -> u64 {
        self.sampler.batches_per_epoch()
    }

    #[getter]
    fn source_tokens(&self) -> u64 {
        self.sampler.source.len()
    }

    /// Buffers the current prefetcher has allocated.
    #[getter]
    fn buffers_allocated(&self) -> usize {
        self.prefetcher.lock().unwrap().as_ref().map_or(0, |p| p.buffers())
    }

    /// (Re)start serving at batch `first_batch` of `epoch`; batches prepared before are dropped.
    fn start(&self, epoch: u64, first_batch: u64) {
        let mut slot = self.prefetcher.lock().unwrap();
        *slot = None; // stop the old workers first
        *slot = Some(Prefetcher::start(self.sampler.clone(), epoch, first_batch, self.threads, self.buffers));
    }

    /// The next batch as a buffer of int64 `[inputs | targets]`, or None at the end of the epoch.
    fn next(&self, py: Python<'_>) -> PyResult<Option<BatchBuffer>> {
        let got = py.detach(|| self.prefetcher.lock().unwrap().as_ref().and_then(|p| p.next()));
        match got {
            None => Ok(None),
            Some(r) => {
                let mut lease = core(py, r)?;
                let ptr = lease.data_mut().as_mut_ptr() as usize;
                let len = lease.data().len();
                Ok(Some(BatchBuffer { rows: lease.rows, ptr, shape: [len as isize], stride: [8], _lease: lease }))
            }
        }
    }

    /// Stream offsets of this rank's spans for `epoch`, in the order they are served.
    fn span_starts(&self, epoch: u64) -> Vec<u64> {
        let s = &self.sampler;
        (0..s.batches_per_epoch()).flat_map(|b| (0..s.batch_len(b)).map(move |j| s.span_start(epoch, b, j))).collect()
    }
}

/// One batch's memory, exported through the buffer protocol without a copy. The buffer returns
/// to the loader's ring only when this object, and so every array or tensor viewing it, is gone.
#[pyclass(frozen)]
struct BatchBuffer {
    #[pyo3(get)]
    rows: usize,
    ptr: usize,
    shape: [isize; 1],
    stride: [isize; 1],
    _lease: Lease,
}

#[pymethods]
impl BatchBuffer {
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        use pyo3::ffi;
        if view.is_null() {
            return Err(PyValueError::new_err("NULL view in getbuffer"));
        }
        let this = slf.get();
        // SAFETY: `view` is a valid Py_buffer to fill (the protocol's contract). The memory stays
        // valid while `obj` (a strong reference to this object, which owns the lease) is held.
        unsafe {
            (*view).obj = slf.clone().into_any().into_ptr();
            (*view).buf = this.ptr as *mut std::ffi::c_void;
            (*view).len = this.shape[0] * 8;
            (*view).readonly = 0;
            (*view).itemsize = 8;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT { c"q".as_ptr() as *mut _ } else { std::ptr::null_mut() };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND { this.shape.as_ptr() as *mut _ } else { std::ptr::null_mut() };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES { this.stride.as_ptr() as *mut _ } else { std::ptr::null_mut() };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

/// The BOS that a store made with the tokenizer.json text `json` would record (`<|endoftext|>`, else
/// the tokenizer's own), or None.
#[pyfunction]
fn tokenizer_bos_id(py: Python<'_>, json: String) -> PyResult<Option<u32>> {
    let tokenizer = core(py, py.detach(|| arrows_core::tokenizer::Tokenizer::from_json(json, Path::new("tokenizer.json"))))?;
    Ok(tokenizer.bos_id)
}

/// Memory this process may still take, in bytes (the kernel's MemAvailable, or less under a
/// control group's limit); None where it cannot be read.
#[pyfunction]
fn available_memory() -> Option<u64> {
    arrows_core::memory::available_bytes()
}

#[pymodule]
fn _arrows(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TokenizeJob>()?;
    m.add_class::<LoaderCore>()?;
    m.add_class::<BatchBuffer>()?;
    m.add_function(wrap_pyfunction!(open_store, m)?)?;
    m.add_function(wrap_pyfunction!(verify_store, m)?)?;
    m.add_function(wrap_pyfunction!(read_shard_header, m)?)?;
    m.add_function(wrap_pyfunction!(available_memory, m)?)?;
    m.add_function(wrap_pyfunction!(tokenizer_bos_id, m)?)?;
    m.add("SHARD_HEADER_BYTES", shard::HEADER_LEN)?;
    Ok(())
}
